"""Commit, abort or show a fleet's canary version: an operator's command to the update service over MQTT (the
fleet's service command topic, MQTT v5 request/response; replies on ops/<request id>, which the example ACL lets
operators read), or the fleet's retained service status for `status`."""

from __future__ import annotations

import json
import uuid

from infantino.runtime.cliutil import guarded, setup_logging
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.topics import Topics
from infantino.runtime.mqtt import BrokerConfig, MqttLink, read_retained_json, request_json

HELP = "rollout: commit / abort a fleet's canary version, or show its phase and gate figures"


def add_arguments(p) -> None:
    p.add_argument("action", choices=("status", "commit", "abort"), help="what to do")
    p.add_argument("--config", required=True, help="trainer.yaml (its broker and topic prefix; use operator "
                   "credentials via --username/--password-file where the broker has an ACL)")
    p.add_argument("--fleet", required=True, help="the fleet")
    p.add_argument("--version", type=int, help="commit/abort only if this is the version under observation")
    p.add_argument("--username", help="MQTT username (default: the config's)")
    p.add_argument("--password-file", help="MQTT password file (default: the config's)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the service (default 10)")


def _link(cfg: BrokerConfig, args) -> MqttLink:
    upd = {"client_id": f"infantino-rollout-cli-{uuid.uuid4().hex[:8]}", "session_expiry_s": 0}
    if args.username:
        upd["username"] = args.username
    if args.password_file:
        upd.update(password_file=args.password_file, password=None)
    broker = validate_config(BrokerConfig, {**cfg.model_dump(exclude_none=True), **upd})
    return MqttLink(broker, client_id=broker.client_id, clean_start=True)


def run(args) -> int:
    from infantino.trainer.service import load_service_config  # local: pydantic config only

    cfg = load_service_config(args.config)
    if args.fleet not in {f.name for f in cfg.fleets}:
        raise InfantinoError(f"fleet {args.fleet!r} is not in {args.config} ({', '.join(f.name for f in cfg.fleets)})")
    topics = Topics(cfg.topic_prefix)
    link = _link(cfg.broker, args).start()
    try:
        if args.action == "status":
            got = read_retained_json(link, topics.fleet_service_status(args.fleet), args.timeout)
            if got is None:
                raise InfantinoError(f"no service status for fleet {args.fleet} (is the update service running?)")
            print(json.dumps(got.get("rollout") or {"rollout": None, "published_version": got.get("published_version")},
                             indent=2))
            return 0
        req = uuid.uuid4().hex[:12]
        cmd = {"command": args.action, "request_id": req, **({"version": args.version} if args.version else {})}
        got = request_json(link, topics.fleet_service_cmd(args.fleet), json.dumps(cmd), f"ops/{req}", args.timeout,
                           f"the update service for fleet {args.fleet}", correlation=req.encode())
    finally:
        link.stop(timeout=1.0)
    print(json.dumps(got, indent=2, default=str))
    if not got.get("ok"):
        raise InfantinoError(f"{args.action} refused: {got.get('error')}")
    return 0


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="infantino-train rollout", description=__doc__.strip())
    add_arguments(p)
    setup_logging(-1)
    return guarded("infantino-train rollout", run, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
