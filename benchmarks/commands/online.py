"""Online learning costs: learn_one time, head update sizes and apply time, broker loop latency, forgetting.

Sections (each one reports its own failure and the others go on):
  learn_one   wall time of OnlineHead.learn_one (replay mix + Adam step + recalibration), p50/p95/p99, and its
              ratio to a bare partial_fit of one sample timed call by call in turn (goal <= 1.3x)
  updates     bytes of a full head and of float32 / float16 deltas after one learn_one, and the device-side
              apply time (parse + Ed25519 verify + checks + sha256)
  broker      sample -> applied latency over a real MQTT broker (the device part's loop benchmark), p50/p95/p99
  forgetting  old-domain (adult) and new-domain (infant) accuracy along an uneven infant stream: naive
              partial_fit vs replay (vs replay + anchor, vs the default with distillation): the forgetting curve
  skewed      the harder Gaussian scenario (trainer.online_eval.SkewedShift: adult start ~0.6, a conflicting
              infant domain streamed 3 classes first, then all): adult drop / infant gain, coverage and set
              sizes of naive, replay, replay + anchor and the default, over --skewed-seeds
Embeddings come from trainer.online_eval: a Gaussian mixture with a shifted "infant" domain (fast) or adult and
infant faces of the generator through a fixed CNN (--source synth, by default the pretrained FER-2013
mini-Xception).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from infantino.runtime.contract import head_update, signing
from infantino.trainer.online_eval import (SkewedShift, forgetting, forgetting_skewed, initial_head, learn_one_latency,
                                           load_domains, plot_skewed, seed_list, stream_indices)
from infantino.trainer.online_head import OnlineHeadConfig

from .. import common
from .. import report as rpt
from ..machine import describe, load_average

log = logging.getLogger(__name__)

HELP = "online head: learn_one time, delta size/apply time, broker sample->applied latency, forgetting curve"
SECTIONS = ("learn_one", "updates", "broker", "forgetting", "skewed")
CSV_COLUMNS = ("key", "section", "status", "reason", "value", "unit", "n")
TABLE_COLUMNS = (("key", "measure", ""), ("status", "status", ""), ("value", "value", ".4g"), ("unit", "unit", ""),
                 ("n", "n", ""))


def add_arguments(p) -> None:
    p.add_argument("--sections", default="all", help=f"comma list of {', '.join(SECTIONS)}, or all (default)")
    p.add_argument("--source", choices=("gaussian", "synth"), default="gaussian",
                   help="embeddings: Gaussian mixture with a domain shift (fast, default) or generator images "
                        "through a fixed CNN (synth; slower)")
    p.add_argument("--feature-map", default="fer", metavar="fer|random|PT",
                   help="with --source synth: the fixed CNN that embeds the generator images: the pretrained "
                        "FER-2013 mini-Xception (fer, default), a random-init test network (random), or an "
                        "extractor checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=common.positive_int, default=300, help="timed learn_one calls (default 300)")
    p.add_argument("--updates", type=common.positive_int, default=50,
                   help="head updates for the update-size and broker sections (default 50)")
    p.add_argument("--stream", type=common.positive_int, default=600,
                   help="infant samples streamed in the forgetting scenario (default 600)")
    p.add_argument("--curve-every", type=common.positive_int, default=50,
                   help="points of the forgetting curve every N samples (default 50)")
    p.add_argument("--skewed-seeds", type=seed_list, default=[0],
                   help="seeds of the skewed section, comma list (default 0; the docs use 0,1,2)")
    p.add_argument("--skewed-scale", type=_scale, default=1.0,
                   help="scale of the skewed scenario's sizes (1 = 1,400 adult training faces and a 1,000 + 500 "
                        "stream, ~1 min per seed; smaller for a quick check)")
    p.add_argument("--broker", default=None, metavar="HOST:PORT|local",
                   help="MQTT broker for the loop latency: HOST:PORT, or 'local' to start Mosquitto on a free "
                        "loopback port (default: section skipped)")
    p.add_argument("--delta-dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the deltas the trainer service publishes in the broker loop (default float32)")
    p.add_argument("--warmup", type=common.non_negative_int, default=20, help="untimed learn_one calls (default 20)")
    common.add_output_arguments(p)



def _scale(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.05 <= v <= 10:
        raise argparse.ArgumentTypeError(f"must be between 0.05 and 10, got {v}")
    return v


def _pct(values_ms) -> dict:
    v = np.asarray(values_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)),
            "p99_ms": float(np.percentile(v, 99)), "mean_ms": float(v.mean()), "n": int(v.size)}


# ---- sections --------------------------------------------------------------------------------------------------
def _data(args, cache: dict):
    if "data" not in cache:
        kw = {}
        if args.source == "synth":
            kw = {"feature_map": args.feature_map, "progress": False}
        cache["data"] = load_domains(args.source, seed=args.seed, **kw)
    return cache["data"]


def section_learn_one(args, cache) -> dict:
    """trainer.online_eval.learn_one_latency: learn_one and a bare one-sample partial_fit, call by call in turn."""
    r = learn_one_latency(_data(args, cache), OnlineHeadConfig(seed=args.seed), n=args.n, warmup=args.warmup)
    return r


def section_updates(args, cache) -> dict:
    """Sizes of full/delta updates after each learn_one, and the device-side apply time of each kind."""
    data = _data(args, cache)
    cfg = OnlineHeadConfig(seed=args.seed)
    head = initial_head(data, replace(cfg, calib_holdout=0.0), epochs=5)
    eid = head.extractor_id
    with tempfile.TemporaryDirectory(prefix="infantino-bench-keys-") as d:
        signing.generate_keypair(Path(d) / "k.key", Path(d) / "k.pub")
        priv, pub = signing.load_private_key(Path(d) / "k.key"), signing.load_public_key(Path(d) / "k.pub")
    inf = data["infant"]
    order = stream_indices(inf.y_train, None, args.updates, seed=args.seed + 3)
    kinds = [("full", None, "none"), ("full_zlib", None, "zlib"), ("delta_float32", "float32", "none"),
             ("delta_float32_zlib", "float32", "zlib"), ("delta_float16", "float16", "none"),
             ("delta_float16_zlib", "float16", "zlib")]
    published = {k: head.to_head() for k, dt, _ in kinds if dt}  # what each delta chain's devices hold
    sizes: dict[str, list[int]] = {k: [] for k, _, _ in kinds}
    apply_ms: dict[str, list[float]] = {k: [] for k, _, _ in kinds}
    new = head.to_head()
    for i in order:
        head.learn_one(inf.X_train[i], int(inf.y_train[i]))
        new = head.to_head()
        for kind, dt, comp in kinds:
            if dt is None:
                blob, base = head_update.encode_full(new, priv, compression=comp, fleet="bench"), None
            else:
                base = published[kind]
                if new.version <= base.version:  # the sample went to calibration only: no new version
                    continue
                blob, published[kind] = head_update.encode_delta(base, new, priv, dtype=dt, compression=comp, fleet="bench")
            sizes[kind].append(len(blob))
            t = time.perf_counter()
            head_update.apply_update(base, blob, pub, eid)
            apply_ms[kind].append((time.perf_counter() - t) * 1e3)
    n_weights = int(sum(w.size for w in new.weights))
    return {"n_updates": len(order), "weights": n_weights, "raw_float32_bytes": 4 * n_weights,
            "bytes": {k: {"median": float(np.median(v)), "max": int(max(v))} for k, v in sizes.items() if v},
            "apply": {k: _pct(v) for k, v in apply_ms.items() if v}}


def section_broker(args, cache) -> dict:
    """Sample -> applied latency over a real broker: infantino.benchmarks.loopbench.measure_loop (real Mosquitto,
    the trainer's UpdateService and the DeviceDaemon's OTA path), p50/p95/p99 over --updates samples."""
    if args.broker is None:
        raise SectionSkipped("no --broker given (use --broker local to start Mosquitto, or HOST:PORT)")
    try:
        from infantino.benchmarks import loopbench  # optional (see except)
    except ImportError as e:
        raise SectionFailed(f"infantino.benchmarks.loopbench is not available: {e}") from None
    broker = None  # None: loopbench starts its own Mosquitto on a free loopback port
    if args.broker != "local":
        host, _, port = args.broker.rpartition(":")
        broker = SimpleNamespace(host=host, port=int(port))
    with tempfile.TemporaryDirectory(prefix="infantino-bench-loop-") as work:
        return loopbench.measure_loop(args.updates, delta_dtype=args.delta_dtype, broker=broker, workdir=work,
                                      seed=args.seed)


def section_forgetting(args, cache) -> dict:
    return forgetting(_data(args, cache), OnlineHeadConfig(seed=args.seed), n_stream=args.stream,
                      seed=args.seed, curve_every=args.curve_every)


def section_skewed(args, cache) -> dict:
    """forgetting_skewed on the SkewedShift scenario (sizes scaled by --skewed-scale), over --skewed-seeds."""
    sc = SkewedShift()
    k = args.skewed_scale
    sc = replace(sc, **{f: max(50, int(round(getattr(sc, f) * k)))
                        for f in ("n_train", "n_cal", "n_test", "n_first", "n_rest")})
    return forgetting_skewed(sc, seeds=args.skewed_seeds, curve_every=max(1, (sc.n_first + sc.n_rest) // 15))


class SectionSkipped(Exception):
    """A section that was not asked for in a way that can run (e.g. no broker): its row says why."""


class SectionFailed(Exception):
    """A section that could not run: its row says why."""


RUNNERS = {"learn_one": section_learn_one, "updates": section_updates, "broker": section_broker,
           "forgetting": section_forgetting, "skewed": section_skewed}


# ---- rows ------------------------------------------------------------------------------------------------------
def rows_for(name: str, res: dict) -> list[dict]:
    """Flatten one section's result into table/CSV rows (key, value, unit, n)."""
    def row(key, value, unit, n=None):
        return {"key": f"{name}.{key}", "section": name, "status": "ok", "value": value, "unit": unit, "n": n}

    out = []
    if name == "learn_one":
        n = res.get("n")
        for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "partial_fit_p50_ms", "partial_fit_p95_ms"):
            if res.get(k) is not None:
                out.append(row(k.replace("_ms", ""), res[k], "ms", n))
        if res.get("ratio_p50") is not None:
            out.append(row("ratio_p50", res["ratio_p50"], "x", n))
    elif name == "updates":
        for kind, b in res["bytes"].items():
            out.append(row(f"{kind}.bytes", b["median"], "B", res["n_updates"]))
        for kind, a in res["apply"].items():
            out.append(row(f"{kind}.apply_p50", a["p50_ms"], "ms", a["n"]))
            out.append(row(f"{kind}.apply_p99", a["p99_ms"], "ms", a["n"]))
    elif name == "broker":
        lat = res.get("latency_ms") or {}
        for k in ("p50", "p95", "p99", "mean"):
            if isinstance(lat.get(k), (int, float)):
                out.append(row(f"sample_to_applied.{k}", lat[k], "ms", lat.get("n")))
        for stage, d in (res.get("breakdown_ms") or {}).items():
            if isinstance(d, dict) and isinstance(d.get("p50"), (int, float)):
                out.append(row(f"{stage}.p50", d["p50"], "ms", d.get("n")))
        pub = res.get("published") or {}
        for k in ("delta_bytes", "full_bytes"):
            if isinstance(pub.get(k), (int, float)):
                out.append(row(f"published.{k.replace('_bytes', '')}.bytes", pub[k], "B", pub.get("updates")))
        out.append(row("timeouts", res.get("timeouts", 0), "updates", res.get("n")))
    elif name == "forgetting":
        for method, m in res["methods"].items():
            out.append(row(f"{method}.adult_before", m["before"]["adult"], "acc", res["n_stream"]))
            out.append(row(f"{method}.adult_after", m["after"]["adult"], "acc", res["n_stream"]))
            out.append(row(f"{method}.infant_before", m["before"]["infant"], "acc", res["n_stream"]))
            out.append(row(f"{method}.infant_after", m["after"]["infant"], "acc", res["n_stream"]))
            out.append(row(f"{method}.adult_drop", m["adult_drop_points"], "points", res["n_stream"]))
    elif name == "skewed":
        n = len(res["seeds"])
        for method, m in res["summary"].items():
            for k, unit in (("adult_before", "acc"), ("adult_after", "acc"), ("infant_before", "acc"),
                            ("infant_after", "acc"), ("adult_drop_points", "points"), ("infant_gain_points", "points"),
                            ("adult_coverage", "coverage"), ("infant_coverage", "coverage"),
                            ("adult_set_size", "classes"), ("infant_set_size", "classes")):
                out.append(row(f"{method}.{k.replace('_points', '')}", m[k]["mean"], unit, n))
            out.append(row(f"{method}.meets_goal", int(m["meets_goal"]), "bool", n))
    return out


def run(args) -> int:
    sections = common.name_list(args.sections, SECTIONS, "sections") or list(SECTIONS)
    common.check_output_paths(args)
    if args.feature_map not in ("fer", "random") and not Path(args.feature_map).is_file():
        raise FileNotFoundError(f"--feature-map: not fer, random or an existing checkpoint: {args.feature_map}")
    if args.broker not in (None, "local"):
        host, _, p = args.broker.rpartition(":")
        if not host or not p.isdigit():
            raise ValueError(f"--broker must be HOST:PORT or local, got {args.broker!r}")
    machine = describe(threads=None, peak=not args.no_peak)
    rows, details, cache = [], {}, {}
    console = rpt.make_console(stderr=True)
    for name in sections:
        t0 = time.perf_counter()
        with console.status(f"online: {name}"):
            try:
                res = RUNNERS[name](args, cache)
                details[name] = res
                rows += rows_for(name, res)
            except SectionSkipped as e:
                rows.append({"key": name, "section": name, "status": "skipped", "reason": str(e)})
            except Exception as e:  # a section that breaks keeps its row with the reason; the others go on
                log.debug("section %s failed", name, exc_info=True)
                rows.append({"key": name, "section": name, "status": "failed", "reason": f"{type(e).__name__}: {e}"})
        log.info("section %s: %.1f s", name, time.perf_counter() - t0)
    machine["load_average_end"] = load_average()
    config = {"sections": sections, "source": args.source, "seed": args.seed, "n": args.n, "updates": args.updates,
              "stream": args.stream, "skewed_seeds": args.skewed_seeds, "skewed_scale": args.skewed_scale, "broker": args.broker, "delta_dtype": args.delta_dtype,
              "feature_map": args.feature_map if args.source == "synth" else None}
    summary = {r["key"]: r["value"] for r in rows if r["status"] == "ok" and isinstance(r.get("value"), (int, float))}
    report = rpt.make_report("online", machine, config, rows, sections=details, summary=summary)
    rpt.print_table("infantino-bench online", TABLE_COLUMNS, rows, console=rpt.make_console(),
                    caption=f"{machine['cpu_model']}, source={args.source}, load {machine['load_average_start']} → "
                            f"{machine['load_average_end']}")
    common.write_outputs(report, args, CSV_COLUMNS, _plots)
    return 0


def _plots(report: dict, out: Path) -> list[Path]:
    files = []
    f = (report.get("sections") or {}).get("forgetting")
    if f:
        series = {}
        for method, m in f["methods"].items():
            xs = [0] + [p["step"] for p in m["curve"]]
            series[f"{method} adult"] = (xs, [m["before"]["adult"]] + [p["adult"] for p in m["curve"]])
            series[f"{method} infant"] = (xs, [m["before"]["infant"]] + [p["infant"] for p in m["curve"]])
        files.append(rpt.plot_lines(series, out / "online_forgetting.png",
                                    f"forgetting curve: {f['n_stream']} infant samples of {f['stream_classes']}",
                                    "streamed samples", "accuracy"))
    sk = (report.get("sections") or {}).get("skewed")
    if sk:
        path = out / "online_skewed.png"
        plot_skewed(sk, path)
        files.append(path)
    return files
