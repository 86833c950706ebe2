"""The fleet page and its API: every device of every fleet (from retained statuses), each fleet's rollout phase and
gate figures, head history with samples learned and real-face agreement, links into MLflow, and /metrics; an
operator commits or aborts a canary version. A bearer token (or the cookie the login form sets) is required whenever
one is configured, which it must be for a non-loopback bind; commit/abort need the operator token."""

from __future__ import annotations

import html
import json
from typing import Optional

from fastapi import Body, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from infantino.runtime.webauth import Auth

from .config import ServiceWebConfig

COOKIE = "infantino_service_session"  # not the device page's: cookies are per host, not per port

def create_app(service, cfg: ServiceWebConfig) -> FastAPI:
    """The FastAPI app over an UpdateService (its fleet_report() and metrics)."""
    token = cfg.token()
    auth = Auth(token, cfg.operator_token(), cookie=COOKIE)
    app = FastAPI(title="InfantinO Edge update service", version="1",
                  description="Fleet status, head history and metrics of the online-learning update service.")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request):
        if auth.role(request)[0] is None:
            return HTMLResponse(LOGIN_PAGE, status_code=401)
        return HTMLResponse(render_page(service.fleet_report(), cfg.mlflow_ui))

    @app.post("/login", include_in_schema=False)
    def login(token_field: str = Form(..., alias="token")):
        if auth.role_of_token(token_field) is None:
            return HTMLResponse(LOGIN_PAGE.replace("<!--msg-->", "<p class=bad>wrong token</p>"), status_code=401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(auth.cookie, Auth.session_value(token_field), httponly=True, samesite="strict")
        return resp

    def rollout(fleet: str, action: str, version: Optional[int]) -> dict:
        out = service.rollout_command(fleet, action, version)
        if not out.get("ok"):
            raise HTTPException(409, out.get("error", "refused"))
        return out

    @app.post("/v1/fleets/{fleet}/rollout/{action}", summary="commit or abort the canary version (operator)")
    def rollout_api(fleet: str, action: str, request: Request, body: Optional[dict] = Body(None)):
        auth.operator(request)
        if action not in ("commit", "abort"):
            raise HTTPException(404, f"unknown rollout action {action!r}: commit or abort")
        version = (body or {}).get("version")
        if version is not None and not isinstance(version, int):
            raise HTTPException(422, "version must be an integer")
        return JSONResponse(rollout(fleet, action, version))

    @app.post("/rollout/{fleet}/{action}", include_in_schema=False)
    def rollout_form(fleet: str, action: str, request: Request, version: int = Form(...)):
        auth.operator(request)
        if action not in ("commit", "abort"):
            raise HTTPException(404, f"unknown rollout action {action!r}")
        rollout(fleet, action, version)
        return RedirectResponse("/", status_code=303)

    @app.get("/v1/fleets", summary="every fleet: published head, history, devices")
    def fleets(request: Request):
        auth.user(request)
        return JSONResponse(service.fleet_report())

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics(request: Request):
        auth.user(request)
        return Response(service.metrics_text(), media_type="text/plain; version=0.0.4")

    return app


LOGIN_PAGE = """<!doctype html><html><head><meta charset=utf-8><title>InfantinO fleet</title>
<style>body{font-family:system-ui,sans-serif;margin:3em}.bad{color:#b00}</style></head>
<body><h1>InfantinO Edge: fleet</h1><!--msg--><form method=post action=/login>
<label>Token <input name=token type=password autofocus></label> <button>Open</button></form></body></html>"""


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "–"
    return format(v, spec) if spec else str(v)


def render_page(report: dict, mlflow_ui: Optional[str]) -> str:
    """The fleet page: one section per fleet (devices, head history); refreshes itself every 3 s."""
    e = html.escape
    parts = []
    for f in report["fleets"]:
        rows = "".join(
            f"<tr class={'on' if d['online'] else 'off'}><td>{e(d['device_id'])}</td><td>{e(d.get('ring') or 'main')}</td>"
            f"<td>{'online' if d['online'] else 'offline'}</td><td>{_fmt(d['head_version'])}"
            f"{' <b class=behind>behind</b>' if (d['head_version'] or 0) < (f['published_version'] or 0) else ''}</td>"
            f"<td>{_fmt(d['fps'], '.1f')}</td><td>{e(_fmt(d['camera']))}</td><td>{e(_fmt(d['last_update']))}</td>"
            f"<td>{e(', '.join(f'{k}: {v}' for k, v in (d['rejections'] or {}).items()) or '–')}</td>"
            f"<td>{_fmt(d['age_s'], '.0f')} s</td></tr>" for d in f["devices"]) or \
            "<tr><td colspan=9>no device status yet</td></tr>"
        hist = "".join(
            f"<tr class={'held' if h['held_back'] or h.get('failed') else ''}><td>v{h['version']}</td>"
            f"<td>{'held back' if h['held_back'] else 'published to ' + e(h.get('ring') or 'main')}"
            f"{' · <b>rolled back</b>' if h.get('failed') else ''}{' · ' + e(h['note']) if h.get('note') else ''}</td>"
            f"<td>{h['samples']}</td>"
            f"<td>{h['learned_total']}</td><td>{_fmt(h['realface_agreement'], '.3f')}</td>"
            f"<td>{e(h['time'])}</td></tr>" for h in f["history"]) or "<tr><td colspan=6>nothing yet</td></tr>"
        run = f.get("mlflow_run_id")
        link = (f" · <a href='{e(mlflow_ui.rstrip('/'))}/#/experiments/{e(f['mlflow_experiment_id'] or '')}/runs/"
                f"{e(run)}'>MLflow run</a>") if mlflow_ui and run else (f" · MLflow run {e(run)}" if run else "")
        parts.append(
            f"<section><h2>Fleet {e(f['fleet'])}</h2><p>published head <b>v{f['published_version']}</b> · "
            f"{f['samples_learned']} samples learned · {f['held_back']} version(s) held back by the real-face "
            f"guard{link}</p>{_rollout_html(f)}<h3>Devices</h3><table><tr><th>device</th><th>ring</th><th>state</th><th>head</th><th>fps</th>"
            f"<th>camera</th><th>last update</th><th>rejections</th><th>status age</th></tr>{rows}</table>"
            f"<h3>Head history</h3><table><tr><th>version</th><th></th><th>samples</th><th>learned total</th>"
            f"<th>real-face agreement</th><th>when (UTC)</th></tr>{hist}</table></section>")
    return PAGE.replace("<!--body-->", "".join(parts)).replace("<!--json-->", e(json.dumps(report["generated_at"])))


def _rollout_html(f: dict) -> str:
    """The fleet's rollout: phase, candidate vs committed, the gate's figures, the last decision, commit/abort."""
    r = f.get("rollout")
    if not r:
        return "<p><small>no staged rollout: every version goes to every device at once</small></p>"
    e = html.escape
    g = (r.get("gate") or {})
    figs = " · ".join(f"{e(k)} {e(_fmt(v))}" for k, v in (g.get("figures") or {}).items())
    last = r.get("last_decision") or {}
    last_txt = (f"last: v{last.get('version')} <b>{e(str(last.get('decision')))}</b> by {e(str(last.get('by')))} "
                f"after {last.get('observed_s')} s{(': ' + e('; '.join(last.get('reasons') or []))) if last.get('reasons') else ''}"
                if last else "no decision yet")
    buttons = ""
    if r.get("candidate_version") is not None:
        v = int(r["candidate_version"])
        buttons = "".join(f"<form method=post action='/rollout/{e(f['fleet'])}/{a}' style='display:inline'>"
                          f"<input type=hidden name=version value={v}><button>{a} v{v}</button></form> "
                          for a in ("commit", "abort"))
    return (f"<h3>Rollout</h3><p>ring <b>{e(r['ring'])}</b> ({e(', '.join(r['canary_devices']) or '')}"
            f"{' + ' + str(r['canary_percent']) + ' %' if r['canary_percent'] else ''}) · phase <b>{e(r['phase'])}</b>"
            f"{' · candidate <b>v' + str(r['candidate_version']) + '</b>' if r.get('candidate_version') is not None else ''}"
            f" · committed v{r['committed_version']} · failed {e(', '.join(f'v{v}' for v in r['failed_versions']) or 'none')}"
            f"</p><p><small>gate: {e(str(g.get('decision', '–')))} {e('; '.join(g.get('reasons') or []))}"
            f"{' · ' + figs if figs else ''}</small></p><p><small>{last_txt}</small></p>{buttons}")


PAGE = """<!doctype html><html><head><meta charset=utf-8><title>InfantinO fleet</title>
<meta http-equiv=refresh content=3>
<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin-bottom:1em}
td,th{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left;font-size:14px}th{background:#f4f4f4}
tr.off td{color:#999}tr.held td{color:#b36b00}.behind{color:#b36b00;font-size:12px}section{margin-bottom:2em}h2{margin-bottom:.2em}
small{color:#777}</style></head><body><h1>InfantinO Edge · fleets</h1>
<small>statuses and figures only: no image ever reaches this page · refreshed every 3 s ·
<a href=/v1/fleets>JSON</a> · <a href=/metrics>metrics</a> · <a href=/docs>API</a></small><!--body--></body></html>"""
