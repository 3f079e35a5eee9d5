"""The agent process and its parts (`python -m pilotfish.agent CONFIG_JSON`)."""
