"""int8 study (issue 15): PT2E quantization-aware fine-tuning (distillation from the fp32 extractor + head), then litert-torch
int8 TFLite."""
import time, logging
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from infantino.trainer.extractor import load_extractor
from infantino.runtime.contract.preprocess import preprocess
from infantino.runtime.contract.head import Head
from infantino.trainer.synth import synth_arrays
from infantino.trainer.realface_guard import real_face_split
from infantino.compiler.formats.tflite import _layout_module
import litert_torch
from litert_torch.quantize import pt2e_quantizer
from litert_torch.quantize.quant_config import QuantConfig
from torchao.quantization.pt2e import quantize_pt2e
from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
logging.basicConfig(level=logging.INFO)
import argparse
ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("model", help="mini_xception (demo checkpoint + head) or a trainer extractor.pt (head.infh beside it)")
ap.add_argument("px", type=int)
ap.add_argument("out", help="folder (tfl_int8_qat.tflite is written there)")
ap.add_argument("steps", type=int, help="fine-tuning steps of batch 32")
ap.add_argument("lr", type=float, nargs="?", default=1e-4, help="Adam learning rate (default 1e-4)")
a = ap.parse_args()
src, px, out, steps, lr = a.model, a.px, Path(a.out), a.steps, a.lr
torch.set_num_threads(2); torch.manual_seed(0)
if src == "mini_xception":
    src = "/work/main/demo-out/runs/fit/extractor.pt"; head_path = "/work/main/demo-out/bundle/head.infh"
else:
    head_path = str(Path(src).parent / "head.infh")
model, cfg = load_extractor(src)
spec = cfg.spec.model_copy(update={"input_size": (px, px)})
head = Head.from_bytes(open(head_path, "rb").read())
W = [torch.from_numpy(w.astype(np.float32)) for w in head.weights]
def head_logits(e):
    x = e
    for i in range(len(W) // 2):
        x = x @ W[2 * i] + W[2 * i + 1]
        if i < len(W) // 2 - 1:
            x = torch.relu(x) if head.activation == "relu" else torch.tanh(x)
    return x
# training images: synthetic (adult+infant, medium, seeds disjoint from the measured sets) + real distil faces
imgs = synth_arrays(600, domain="adult", seed=10, size=96, difficulty="medium")[0] + \
       synth_arrays(600, domain="infant", seed=11, size=96, difficulty="medium")[0] + list(real_face_split().distil.images)
X = torch.from_numpy(np.ascontiguousarray(preprocess(imgs, spec, "NCHW").transpose(0, 2, 3, 1)))
module = _layout_module(model, "NHWC")
with torch.no_grad():
    T = torch.cat([module(X[i:i + 64]) for i in range(0, len(X), 64)])
scale = T.std()
quant = pt2e_quantizer.PT2EQuantizer().set_global(
    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
gm = torch.export.export(module, (X[:2],), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=64)},)).module()
from torchao.quantization.pt2e.utils import _fuse_conv_bn_
_fuse_conv_bn_(gm)  # fold the trained BatchNorm into the convs: QAT then trains conv weights with frozen BN
import litert_torch.quantize.pt2e_quantizer_utils as U
_orig = U._get_aten_graph_module_for_pattern
class _Wrap(torch.nn.Module):  # litert-torch passes a plain function where this torch's export wants a Module
    def __init__(s, f):
        super().__init__(); s.f = f
    def forward(s, *a):
        return s.f(*a)
U._get_aten_graph_module_for_pattern = lambda p, ex, is_cuda=False, **kw: _orig(
    p if isinstance(p, torch.nn.Module) else _Wrap(p), ex, is_cuda, **kw)
gm = quantize_pt2e.prepare_qat_pt2e(gm, quant)
move_exported_model_to_train(gm)
with torch.no_grad():  # calibrate the observers before any weight update
    for i in range(0, len(X), 32):
        gm(X[i:i + 32])
opt = torch.optim.Adam(gm.parameters(), lr=lr)
rng = np.random.default_rng(0); t0 = time.time()
for step in range(steps):
    idx = torch.from_numpy(rng.choice(len(X), 32, replace=False))
    x = X[idx]
    if rng.random() < 0.5:
        x = torch.flip(x, dims=[2])
        with torch.no_grad():
            t = module(x)
    else:
        t = T[idx]
    s = gm(x)
    loss = F.mse_loss(s / scale, t / scale) + F.kl_div(F.log_softmax(head_logits(s), 1), F.softmax(head_logits(t), 1),
                                                     reduction="batchmean")
    opt.zero_grad(); loss.backward(); opt.step()
    if step == int(steps * 0.6):  # freeze BN statistics and observers for the last part
        gm.apply(torch.ao.quantization.disable_observer)
    if step % 25 == 0:
        logging.info("step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - t0)
gm = quantize_pt2e.convert_pt2e(gm, fold_quantize=False)
gm = move_exported_model_to_eval(gm); gm.training = False
out.mkdir(parents=True, exist_ok=True)
edge = litert_torch.convert(gm, (X[:1],), quant_config=QuantConfig(pt2e_quantizer=quant))
edge.export(str(out / "tfl_int8_qat.tflite"))
print("wrote", out / "tfl_int8_qat.tflite")
