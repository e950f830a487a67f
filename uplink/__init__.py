"""The NSC Fate inference worker: holds the models and serves predictions over Anvil Uplink.

Run it with ``python -m uplink`` (or ``nscfate-worker``); see docs/WORKER.md. It uses the real
``anvil-uplink`` client, so it connects unchanged to hosted Anvil, the Anvil App Server or the local
host (``apphost``).
"""
