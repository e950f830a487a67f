"""The local host for the NSC Fate Anvil app: serves the app's server modules, Data Tables, users, HTTP
routes and the uplink endpoint ``/_/uplink`` from one Starlette/uvicorn process, offline.

``python -m apphost --port 3030`` starts it (see ``apphost.__main__``).
"""
