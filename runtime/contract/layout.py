"""The file names every part agrees on: a bundle, a trainer output folder, a device's state folder.

One home for each name, so a bundle the compiler writes, a folder `fit` writes and a state folder the daemon keeps
are read by the other parts under the same names.
"""

from __future__ import annotations

# a bundle (compiler writes, runtime reads)
MANIFEST_FILE = "manifest.json"      # schema: contract.manifest.Manifest
SIGNATURE_FILE = "manifest.sig"      # raw Ed25519 signature of manifest.json's bytes
HEAD_FILE = "head.infh"              # contract.head.Head bytes (also the device's current head)
REFERENCE_FILE = "reference.npz"     # reference inputs and PyTorch embeddings for on-device self-checks

# a trainer output folder (`infantino-train fit`, the registry's artifacts)
EXTRACTOR_FILE = "extractor.pt"      # best checkpoint (config + state dict)
LAST_FILE = "last.pt"                # last epoch, for --resume
HEAD_STATE_FILE = "head_state.npz"   # OnlineHead state: arrays + state.json, no pickle (trainer.statefile)
LEGACY_HEAD_STATE_FILE = "head_state.pkl"  # the old pickle state: read only to migrate, when trusted
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion.png"
