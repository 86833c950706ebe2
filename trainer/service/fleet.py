"""Learning and update building for one fleet (no MQTT here): samples into the online head, candidate heads,
signed full/delta updates per rollout ring, and reconciling with the broker's retained heads after a connect."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.bundle import load_bundle
from infantino.runtime.configfile import ConfigError
from infantino.runtime.contract.errors import HeadError, UpdateRejected
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.head_update import apply_update, encode_delta, encode_full
from infantino.runtime.contract.messages import SampleMessage

from ..online_head import OnlineHead
from .config import FleetConfig, TrainerServiceConfig
from .guard import FleetGuard
from .state import MAIN, FleetState

log = logging.getLogger(__name__)


class FleetWorker:
    """One fleet's online head and the heads its rings hold; builds the signed updates that move a ring forward."""

    def __init__(self, cfg: FleetConfig, svc: TrainerServiceConfig, signing_key, public_key, read_only: bool = False):
        self.cfg = cfg
        self.name = cfg.name
        self.svc = svc
        self.signing_key = signing_key
        self.public_key = public_key
        self.guard: Optional[FleetGuard] = None
        if cfg.bundle is not None:
            bundle = load_bundle(cfg.bundle, public_key=public_key)
            self.extractor_id, bundle_head = bundle.extractor_id, bundle.head
            if cfg.real_face_guard:
                self.guard = FleetGuard(bundle, cfg.allow_real_face_regression)
        else:
            if cfg.real_face_guard:
                log.warning("fleet %s: no bundle, so no real-face guard (it embeds real faces with the bundle's "
                            "extractor); set `bundle` or real_face_guard: false", cfg.name)
            try:
                bundle_head = Head.from_bytes(Path(cfg.initial_head).read_bytes())
            except HeadError as e:
                raise ConfigError(f"fleet {cfg.name}: initial_head {cfg.initial_head} is not a head file: {e}") from None
            self.extractor_id = bundle_head.extractor_id

        def fresh():
            online = OnlineHead.load(cfg.head_state, trust_legacy_pickle=cfg.migrate_legacy_state)
            if online.extractor_id and online.extractor_id != self.extractor_id:
                raise ConfigError(f"fleet {cfg.name}: head_state was trained on extractor {online.extractor_id[:12]}…, "
                                  f"the bundle runs {self.extractor_id[:12]}…")
            online.extractor_id = self.extractor_id
            head = online.to_head()
            if head.shapes != bundle_head.shapes or tuple(head.classes) != tuple(bundle_head.classes):
                raise ConfigError(f"fleet {cfg.name}: head_state's head {head.shapes} does not match the bundle's "
                                  f"head {bundle_head.shapes} (shapes or classes)")
            return online, bundle_head

        self.state = FleetState.open(Path(svc.state_dir) / cfg.name, fresh, svc.dedupe_window, read_only)
        if self.state.published.extractor_id != self.extractor_id:
            raise ConfigError(f"fleet {cfg.name}: the saved state belongs to another extractor; "
                              f"move {self.state.dir} away to start over with this bundle")
        self.rings = [MAIN] + ([cfg.rollout.ring] if cfg.staged else [])
        self.full_bytes: dict[str, bytes] = {r: self.encode_full(self.state.ring_head(r)) for r in self.rings}
        self.dirty_samples: list[str] = []
        self.first_received_at: float | None = None
        self.force_full: set[str] = set()  # rings whose devices hold weights unknown here: next update is full

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_samples) or bool(self.force_full)

    # ---- learning ---------------------------------------------------------------------------------
    def learn(self, sample: SampleMessage) -> str:
        weight = float(sample.confidence) if sample.confidence is not None and sample.confidence > 0 else 1.0
        outcome = self.state.online.learn_one(np.asarray(sample.embedding, dtype=np.float32), label=sample.label,
                                              labels=sample.labels, soft_label=sample.soft_label, weight=weight)
        self.state.remember(sample.sample_id)
        self.state.learned += 1
        if outcome != "dropped":
            self.dirty_samples.append(sample.sample_id)
        return outcome

    # ---- updates ------------------------------------------------------------------------------------
    def candidate(self, base_ring: str = MAIN) -> Head | None:
        """The online head as the next version (above every version ever published), or None when it equals what
        `base_ring` holds (and that ring's devices hold weights known here)."""
        st = self.state
        new = st.online.to_head()
        held = st.ring_head(base_ring)
        if (base_ring not in self.force_full and st.knows(base_ring) and new.sha256 == held.sha256
                and new.conformal_qhat == held.conformal_qhat):
            return None
        return new.replace(version=st.floor + 1, extractor_id=self.extractor_id)

    def encode_for(self, ring: str, head: Head) -> tuple[bytes | None, bytes, Head]:
        """(delta or None, full, the exact head the ring's devices end up with) to move `ring` to `head`. The
        delta is against the ring's head (when its weights are known here and the shapes agree); the result of a
        delta depends only on the base weights, so two rings holding the same weights get the same result."""
        st = self.state
        base = st.ring_head(ring)
        delta = None
        if ring not in self.force_full and st.knows(ring) and head.shapes == base.shapes and head.version > base.version:
            delta, head = encode_delta(base, head, self.signing_key, fleet=self.name, dtype=self.svc.delta_dtype,
                                       compression=self.svc.compression)
        return delta, self.encode_full(head), head

    def encode_full(self, head: Head) -> bytes:
        return encode_full(head, self.signing_key, fleet=self.name, compression=self.svc.compression)

    # ---- the broker's retained heads ------------------------------------------------------------------
    def check_retained(self, ring: str, payload: bytes) -> str:
        """Reconcile a ring with the broker's retained head: 'same', 'adopted', 'republish' (ours) or 'new_full'.

        A valid retained head newer than ours (or the version the record says this ring was sent) is what the
        ring's devices hold: it is adopted as the ring's delta base (it carries its full weights)."""
        st = self.state
        ours = st.ring_head(ring)
        try:
            head = apply_update(None, payload, self.public_key, self.extractor_id, fleet=self.name)
        except UpdateRejected as e:
            log.warning("fleet %s: the retained %s head on the broker is unusable (%s)", self.name, ring, e)
            head = None
        if head is not None:
            if head.version == ours.version and head.sha256 == ours.sha256 and st.knows(ring):
                self.full_bytes[ring] = payload
                return "same"
            rec = st.ring_records.get(ring)
            recorded = rec is not None and head.version == int(rec[0]) and head.sha256.startswith(str(rec[1]))
            if head.version > ours.version or recorded:
                if head.version > st.floor:
                    log.warning("fleet %s: the broker holds %s head v%d but this service had published up to v%d "
                                "(state restored from an older copy?): adopting it", self.name, ring, head.version,
                                st.floor)
                else:
                    log.info("fleet %s: adopting the retained %s head v%d (published before a restart) as the "
                             "delta base", self.name, ring, head.version)
                st.set_ring_head(ring, head)
                self.full_bytes[ring] = payload
                self.force_full.discard(ring)
                return "adopted"
        return self.retained_missing(ring)

    def retained_missing(self, ring: str) -> str:
        """The broker lacks the ring's latest head: send ours again, or a new full version if the weights the
        ring's devices hold are not here."""
        if self.state.knows(ring):
            return "republish"
        log.warning("fleet %s: the broker lost the %s head v%s and this service has no copy of it; the next update "
                    "to that ring is a full head v%d", self.name, ring,
                    (self.state.ring_records.get(ring) or ["?"])[0], self.state.floor + 1)
        self.force_full.add(ring)
        return "new_full"
