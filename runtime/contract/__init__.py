"""The contracts between the parts: what the trainer, compiler, runtime and device exchange, and nothing else.

Formats and messages every part depends on, numpy + pydantic only (a camera installs nothing more):
- `head` (head.infh, the MLP head) and `binfmt` (its array encoding); `head_update` (signed full/delta updates);
- `signing` (Ed25519 keys and signatures); `manifest` (a bundle's manifest.json schema);
- `messages` (MQTT bodies) and `topics` (the MQTT topic layout); `classes` (class order, embedding size);
- `preprocess` (the input tensor convention the trainer and every device share);
- `errors` (the exception types callers catch) and `atomic` (temp + fsync + rename writes);
- `layout` (the file names of a bundle, a trainer output and a state directory).
Editing a module here changes more than one part; see docs/contracts.md.
"""
