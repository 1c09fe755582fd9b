"""Order fulfilment across processes: an orchestrator and inventory, payment and shipping services over a broker."""
