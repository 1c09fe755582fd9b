"""Example sagas shipped with sagakit (the one ``sagakit demo`` runs lives in ``order_fulfillment``)."""
