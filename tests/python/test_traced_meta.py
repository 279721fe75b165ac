"""Archives made by torch.jit.trace on the meta device (how a model is exported without its weights) bake
`device=meta` into their graphs' constants: positions from arange, masks from ones/triu. lwq rewrites those
constants to cpu, so the quantized archive runs on CPU; a tensor constant on meta (no values) is refused by name.
Tested with a GPT-2-style model (learned positions, triu mask) and a Llama-style one (rotary angles from arange,
RMSNorm, SwiGLU), each traced on meta, filled from safetensors of the same model on CPU."""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import OPS_LIB, PYTHON_DIR, fails, lwq, ok
from lwq.safetensors import write_safetensors

D, V, T = 32, 64, 12


class Gpt2Style(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(64, D)
        self.ln, self.c_attn, self.c_proj = nn.LayerNorm(D), nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc, self.out, self.head = nn.Linear(D, 4 * D), nn.Linear(4 * D, D), nn.Linear(D, V, bias=False)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t, device=ids.device))
        q, k, v = self.c_attn(self.ln(x)).split(D, dim=-1)
        mask = torch.triu(torch.ones(t, t, device=ids.device), 1).bool()
        a = (q @ k.transpose(1, 2) / D ** 0.5).masked_fill(mask, float("-inf")).softmax(-1)
        x = x + self.c_proj(a @ v)
        return self.head(x + self.out(F.gelu(self.fc(x))))


class LlamaStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.norm = nn.Parameter(torch.ones(D))
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.gate, self.up, self.down = nn.Linear(D, 64, bias=False), nn.Linear(D, 64, bias=False), \
            nn.Linear(64, D, bias=False)
        self.head = nn.Linear(D, V, bias=False)

    def rms(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm

    def forward(self, ids):
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device, dtype=torch.float32)
        inv = torch.exp(torch.arange(0, D, 2, device=ids.device, dtype=torch.float32) * (-math.log(10000.0) / D))
        ang = pos[:, None] * inv[None, :]
        cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)

        def rot(x):
            a, b = x.chunk(2, -1)
            return x * cos + torch.cat([-b, a], -1) * sin

        x = self.embed(ids)
        h = self.rms(x)
        q, k, v = rot(self.q(h)), rot(self.k(h)), self.v(h)
        mask = torch.full((t, t), float("-inf"), device=ids.device).triu(1)
        x = x + self.o((q @ k.transpose(1, 2) / D ** 0.5 + mask).softmax(-1) @ v)
        h = self.rms(x)
        return self.head(x + self.down(F.silu(self.gate(h)) * self.up(h)))


def traced_on_meta(cls, tmp_path):
    torch.manual_seed(0)
    model = cls().eval()
    write_safetensors(tmp_path / "weights.safetensors", {k: v.detach() for k, v in model.state_dict().items()})
    with torch.no_grad():
        traced = torch.jit.trace(cls().to("meta").eval(), torch.zeros(1, T, dtype=torch.long, device="meta"),
                                 check_trace=False)  # the check would run the trace on meta tensors again
    traced.save(str(tmp_path / "model.pt"))
    return model


RUN = """
import sys, torch
torch.ops.load_library(sys.argv[1])
m = torch.jit.load(sys.argv[2])
ids = torch.arange(12).remainder(64).view(1, 12)
torch.save(m(ids), sys.argv[3])
"""


@pytest.mark.parametrize("cls", [Gpt2Style, LlamaStyle])
def test_meta_traced_archive_quantizes_to_a_model_that_runs_on_cpu(cls, tmp_path):
    model = traced_on_meta(cls, tmp_path)
    assert 'prim::Constant[value="meta"]' in str(torch.jit.load(str(tmp_path / "model.pt")).graph) or \
        "meta" in torch.jit.load(str(tmp_path / "model.pt")).code  # the input really has the problem
    r = ok(lwq("quantize", "--model", tmp_path / "model.pt", "--weights", tmp_path / "weights.safetensors",
               "--algo", "rtn", "--dtype", "int8", "--group-size", "-1", "--out", tmp_path / "q.pt"))
    assert "traced on the meta device" in r.stderr
    subprocess.run([sys.executable, "-c", RUN, str(OPS_LIB), str(tmp_path / "q.pt"), str(tmp_path / "y.pt")],
                   check=True, cwd=str(PYTHON_DIR), timeout=120)
    y = torch.load(str(tmp_path / "y.pt"))
    with torch.no_grad():
        ref = model(torch.arange(12).remainder(64).view(1, 12))
    assert y.device.type == "cpu" and y.shape == ref.shape
    assert ((y - ref).norm() / ref.norm()).item() < 0.02  # int8 per channel: close to the float model


class WithConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * torch.tensor([1.0, 2.0, 3.0, 4.0], device=x.device)


def test_a_tensor_constant_on_meta_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    write_safetensors(tmp_path / "w.safetensors", {k: v.detach() for k, v in WithConstant().state_dict().items()})
    with torch.no_grad():
        traced = torch.jit.trace(WithConstant().to("meta"), torch.zeros(2, 4, device="meta"), check_trace=False)
    traced.save(str(tmp_path / "model.pt"))
    fails(lwq("quantize", "--model", tmp_path / "model.pt", "--weights", tmp_path / "w.safetensors", "--algo", "rtn",
              "--out", tmp_path / "q.pt"), "tensor constant on the meta device", "trace the model on CPU")
    assert not (tmp_path / "q.pt").exists()
