"""The built-in backend over real nodes: the agent's side (backend.py), the executor on
each node (executor.py) and the messages between them (protocol.py)."""
