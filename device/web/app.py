"""The FastAPI app: the page (/, /login), its live JPEGs, the JSON API under /v1, /metrics and /docs.

Every route but /login, /static and the OpenAPI docs needs a token (see auth.py); /v1/rollback needs the
operator's. CPU work (decoding an upload, running the pipeline, encoding a JPEG) runs on the server's thread
pool, never on its event loop, and never on the daemon's threads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.images import ImageError

from ..config import WebConfig
from infantino.runtime.webauth import COOKIE, Auth
from .limits import BodyLimit
from .live import LiveEncoder
from .metrics import device_registry
from .models import (FaceOut, HeadsOut, LabelIn, LabelOut, LiveFrameOut, PredictOut, RollbackOut, SampleOut,
                     StatusOut, UndoOut, WebInfo)
from .predict import decode_upload, read_upload
from .view import DeviceView

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SMALL_BODY = 64 << 10  # every route but /v1/predict


def faces_out(faces) -> list[FaceOut]:
    return [FaceOut(index=i, box=tuple(int(v) for v in f.box), label=f.label,
                    probabilities={k: round(float(v), 4) for k, v in f.probabilities.items()},
                    prediction_set=list(f.prediction_set), entropy=round(float(f.entropy), 4))
            for i, f in enumerate(faces)]


def create_app(view: DeviceView, cfg: WebConfig, token: Optional[str] = None,
               operator_token: Optional[str] = None) -> FastAPI:
    """The device's web app over `view`; tokens as resolved from cfg (WebConfig.tokens())."""
    auth = Auth(token, operator_token)
    live = LiveEncoder(view.live, cfg.live_max_fps, cfg.live_max_width, cfg.jpeg_quality)
    registry = device_registry(view, live)
    app = FastAPI(title="InfantinO device", version="1",
                  description="Live view, labelling, head history and predictions of one camera. Images never "
                              "leave the device: a label sends the face's embedding.")
    app.add_middleware(BodyLimit, default=SMALL_BODY, limits={"/v1/predict": cfg.max_upload_bytes})
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.live, app.state.auth = live, auth
    user, operator = Depends(auth.user), Depends(auth.operator)

    # ---- page ---------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page(request: Request):
        role, _ = auth.role(request)
        if role is None:
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/login", include_in_schema=False)
    def login_page():
        return FileResponse(STATIC / "login.html")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await request.form()
        token = str(form.get("token", "")).strip()
        role = auth.role_of_token(token) if token and not auth.open else None
        if auth.open:
            return RedirectResponse("/", status_code=303)
        if role is None:
            return RedirectResponse("/login?failed=1", status_code=303)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, Auth.session_value(token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=30 * 24 * 3600)
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout():
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    # ---- live view ------------------------------------------------------------------------------------
    @app.get("/v1/live", response_model=LiveFrameOut, dependencies=[user], tags=["live"],
             responses={204: {"description": "no frame processed yet"}})
    def live_frame():
        """The newest frame the live view has (encoded now if the rate limit allows) and its faces."""
        enc = live.current()
        if enc is None:
            return Response(status_code=204)
        s = enc.source
        h, w = s.frame.shape[:2]
        return LiveFrameOut(frame_id=s.frame_id, timestamp=s.timestamp, width=w, height=h,
                            head_version=s.head_version, faces=faces_out(s.faces),
                            jpeg_url=f"/live/{s.frame_id}.jpg")

    @app.get("/live/{frame_id}.jpg", dependencies=[user], tags=["live"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no longer kept"}})
    def live_jpeg(frame_id: int):
        data = live.jpeg(frame_id)
        if data is None:
            raise HTTPException(404, f"frame {frame_id} is no longer kept for the live view")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/live.jpg", dependencies=[user], tags=["live"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 204: {"description": "nothing newer than ?since="}})
    def latest_jpeg(since: Optional[int] = None):
        """The newest annotated frame as one JPEG, its LiveFrameOut (without jpeg_url) in the X-Live header:
        one request per frame for the page. With ?since=<frame id>, 204 until a newer frame is there."""
        enc = live.current()
        if enc is None:
            raise HTTPException(404, "no frame processed yet")
        s = enc.source
        if since is not None and s.frame_id <= since:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        h, w = s.frame.shape[:2]
        meta = {"frame_id": s.frame_id, "timestamp": s.timestamp, "width": w, "height": h,
                "head_version": s.head_version, "faces": [f.model_dump() for f in faces_out(s.faces)]}
        return Response(enc.jpeg, media_type="image/jpeg", headers={
            "Cache-Control": "no-store", "X-Frame-Id": str(s.frame_id),
            "X-Live": json.dumps(meta, separators=(",", ":"))})

    # ---- API -----------------------------------------------------------------------------------------------
    @app.post("/v1/predict", response_model=PredictOut, dependencies=[user], tags=["api"],
              openapi_extra={"requestBody": {"content": {
                  "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                  "image/png": {"schema": {"type": "string", "format": "binary"}},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "image": {"type": "string", "format": "binary"}}}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
              responses={400: {"description": "not a decodable image"}, 413: {"description": "too large"},
                         415: {"description": "unsupported content type"}})
    async def predict(request: Request, width: Optional[int] = None, height: Optional[int] = None):
        """Faces, labels, probabilities and prediction sets of an uploaded image: a JPEG/PNG/BMP/WebP body (or
        a multipart `image` field), or a raw BGR frame (`application/octet-stream` with ?width=&height=)."""
        data, raw = await read_upload(request, width, height)
        try:
            frame, decode_ms = await run_in_threadpool(decode_upload, data, raw, cfg.max_upload_bytes,
                                                       cfg.max_pixels)
        except ImageError as e:
            raise HTTPException(400, str(e)) from None
        faces, timings, version = await run_in_threadpool(view.predict, frame)
        timings = {"decode": decode_ms, **timings}
        return PredictOut(width=frame.shape[1], height=frame.shape[0], head_version=version,
                          faces=faces_out(faces), timings_ms={k: round(v, 3) for k, v in timings.items()})

    @app.post("/v1/label", response_model=LabelOut, dependencies=[user], tags=["api"],
              responses={409: {"description": "the frame or face is not available"}})
    def label(body: LabelIn):
        """Send a face's embedding with its label(s) to the update service (held for the undo window first)."""
        bad = [lb for lb in body.all_labels if lb not in CLASSES]
        if bad:
            raise HTTPException(422, f"unknown label {bad[0]!r}; valid: {', '.join(CLASSES)}")
        hold = cfg.undo_window_s if body.undoable else 0.0
        r = view.label(body.all_labels, body.frame_id, body.face, body.annotator, hold)
        if not r.get("ok"):
            raise HTTPException(409, r.get("error", "could not label"))
        return LabelOut(sample_id=r["sample_id"], frame_id=r["frame_id"], face=r["face"], labels=r["labels"],
                        predicted=r["predicted"], state=r["state"], publish_at=r["publish_at"], undo_window_s=hold)

    @app.post("/v1/label/{sample_id}/undo", response_model=UndoOut, dependencies=[user], tags=["api"],
              responses={409: {"description": "already sent, or unknown"}})
    def undo(sample_id: str):
        """Take back a label still in its undo window: it is never sent, so never learned."""
        r = view.undo(sample_id)
        if not r.get("ok"):
            raise HTTPException(409, r.get("error", "cannot undo"))
        return UndoOut(sample_id=sample_id, undone=True)

    @app.get("/v1/samples", response_model=list[SampleOut], dependencies=[user], tags=["api"])
    def samples():
        """The last labelled samples, newest first, with their state (held, sent, acked by the broker, undone)."""
        return view.samples()

    @app.get("/v1/status", response_model=StatusOut, tags=["api"])
    def status(role: str = user):
        s = view.snapshot()
        return StatusOut(
            **s.model_dump(),
            web=WebInfo(live_max_fps=cfg.live_max_fps, undo_window_s=cfg.undo_window_s,
                        auth="none" if auth.open else "token", role=role, classes=list(CLASSES)))

    @app.get("/v1/heads", response_model=HeadsOut, dependencies=[user], tags=["api"])
    def heads(limit: int = 100):
        """Head versions applied, updates rejected (with reasons) and rollbacks, from the device's journal."""
        return view.head_history(max(1, min(limit, 1000)))

    @app.post("/v1/rollback", response_model=RollbackOut, dependencies=[operator], tags=["api"],
              responses={403: {"description": "needs the operator token"}, 409: {"description": "no previous head"}})
    def rollback():
        """Go back to the previous head; the version rolled back from is refused from then on."""
        r = view.rollback()
        if not r["ok"]:
            raise HTTPException(409, r["message"])
        log.warning("head rolled back from the web: %s", r["message"])
        return RollbackOut(**r)

    @app.get("/metrics", dependencies=[user], tags=["api"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def metrics():
        """Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ImageError)
    async def _image_error(_request, exc: ImageError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return app

