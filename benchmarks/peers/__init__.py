"""Peer programs run under their own venv (.venv-peers), never imported by infantino: see fer_peer.py."""
