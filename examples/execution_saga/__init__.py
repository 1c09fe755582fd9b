"""The execution saga of a code-execution service: create a pod, wait for how it ran, delete the pod to undo."""
