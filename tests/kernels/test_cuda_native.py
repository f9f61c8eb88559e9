"""The native CUDA kernels (``csrc/`` + ``CMakeLists.txt``, ``backend="cuda"``).

Without a GPU: configure with and without a CUDA toolkit, build, run the CTest host test, inspect the machine code
(sm_80 and sm_90 present, 128-bit global loads in the streaming kernels, no local memory or spills), load the
library through ctypes and check its struct layout and argument validation, and check the error of
``backend="cuda"`` when the library is missing. With a GPU (``@pytest.mark.gpu``): compare with the reference and
the Triton backend.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import replay_sde_graph

from fastgrpo.kernels import _checks, cuda_backend, logprob_kl, sde_step, step_logprob
from fastgrpo.kernels.sde import naive
from fastgrpo.kernels.sde.philox import philox4x32, philox_normal

ROOT = Path(__file__).resolve().parents[2]
KW = {"noise_level": 0.7, "t_cap": 0.96}
STREAMING = ("sde_step_partial_kernel", "logprob_kl_partial_kernel", "logprob_kl_backward_kernel")
KERNELS = (*STREAMING, "finalize_kernel")


def _tool(name: str) -> str | None:
    """A CUDA binary tool from PATH, the toolkit, or the copy Triton ships (cuobjdump, nvdisasm)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/cuda/bin")
    if found:
        return found
    try:
        from triton.backends.nvidia import __file__ as nvidia_init
    except ImportError:
        return None
    bundled = Path(nvidia_init).parent / "bin" / name
    return str(bundled) if bundled.is_file() else None


def _run(cmd: list[str], **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def native_build(tmp_path_factory) -> tuple[Path, str]:
    """``(build folder, configure + build log)`` of the native library for sm_80 and sm_90."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if _tool("nvcc") is None:
        pytest.skip("no CUDA toolkit (nvcc) to build the native kernels")
    build = tmp_path_factory.mktemp("native_build")
    env = {**os.environ, "CUDACXX": _tool("nvcc")}
    log = _run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"], env=env)
    log += _run(["cmake", "--build", str(build), "-j", str(max(2, os.cpu_count() or 2))], env=env)
    return build, log


@pytest.fixture(scope="module")
def library_file(native_build) -> Path:
    lib = native_build[0] / cuda_backend.LIBRARY_NAME
    assert lib.is_file(), "the CUDA build produced no libfastgrpo_cuda.so"
    return lib


def _cuobjdump(*args: str) -> str:
    tool = _tool("cuobjdump")
    if tool is None:
        pytest.skip("cuobjdump is not available (neither in the CUDA toolkit nor bundled with Triton)")
    return _run([tool, *args])


def _sass_by_kernel(text: str) -> dict[str, str]:
    """Kernel name -> its SASS, from ``cuobjdump -sass`` output (``Function : <mangled name>`` headers)."""
    parts = re.split(r"\n\s*Function : (\S+)\n", text)
    out: dict[str, str] = {}
    for mangled, body in zip(parts[1::2], parts[2::2], strict=True):
        names = [k for k in KERNELS if k in mangled]
        if names:
            out[names[0]] = body
    return out


def test_configure_without_cuda_toolkit_says_so_and_builds_the_host_test(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    bare_path = "/usr/bin:/bin"
    if shutil.which("nvcc", path=bare_path):
        pytest.skip("nvcc is on the bare PATH /usr/bin:/bin, so a toolkit-free configure cannot be simulated")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_PATH", "CUDA_HOME")}
    env["PATH"] = f"{Path(shutil.which('cmake')).parent}:{bare_path}"
    log = _run(["cmake", "-S", str(ROOT), "-B", str(tmp_path)], env=env)
    assert "no CUDA toolkit found; the native kernels are not built" in log
    _run(["cmake", "--build", str(tmp_path)], env=env)
    assert not (tmp_path / cuda_backend.LIBRARY_NAME).exists()
    assert "100% tests passed" in _run(["ctest", "--test-dir", str(tmp_path), "--output-on-failure"], env=env)


def test_ctest_host_checks_pass(native_build):
    build, log = native_build
    assert "building the native CUDA kernels" in log
    assert "100% tests passed" in _run(["ctest", "--test-dir", str(build), "--output-on-failure"])


def test_machine_code_for_sm80_and_sm90_and_ptx_for_newer_gpus(library_file):
    elf = _cuobjdump("--list-elf", str(library_file))
    assert "sm_80.cubin" in elf and "sm_90.cubin" in elf
    assert "sm_90.ptx" in _cuobjdump("--list-ptx", str(library_file))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_streaming_kernels_use_128_bit_global_loads(library_file, arch):
    sass = _sass_by_kernel(_cuobjdump("-sass", "-arch", arch, str(library_file)))
    assert set(KERNELS) <= set(sass), f"kernels missing from the {arch} SASS: {set(KERNELS) - set(sass)}"
    for kernel in STREAMING:
        assert re.search(r"LDG\.E\.128", sass[kernel]), f"{kernel} ({arch}) has no 128-bit global load"
    for kernel in ("sde_step_partial_kernel", "logprob_kl_backward_kernel"):
        assert re.search(r"STG\.E\.128", sass[kernel]), f"{kernel} ({arch}) has no 128-bit global store"


def test_no_local_memory_or_spills(native_build, library_file):
    _, log = native_build
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) >= 2 * len(KERNELS), "ptxas -v output missing from the build log"
    assert all(s == ("0", "0") for s in spills), f"register spills: {spills}"
    usage = _cuobjdump("-res-usage", str(library_file))
    frames = re.findall(r"STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    assert len(frames) >= 2 * len(KERNELS)
    assert all(f == ("0", "0") for f in frames), f"stack or local memory in use: {frames}"


def test_ctypes_binding_matches_the_c_abi(library_file, monkeypatch):
    monkeypatch.setenv("FASTGRPO_CUDA_LIB", str(library_file))
    lib = cuda_backend.library()  # checks the ABI version and sizeof(fg_args) against the ctypes layout
    assert lib.fg_tiles(4097) == 2
    x = torch.zeros(2, 5, dtype=torch.bfloat16)
    times = torch.tensor([0.8, 0.75])
    args = cuda_backend.Args(batch=2, numel=5, x=cuda_backend._rows(x), v=cuda_backend._rows(x.float()))
    args.x_next = cuda_backend._rows(x)
    args.t, args.t_next, args.t_stride = times.data_ptr(), times[1:].data_ptr(), 0
    args.noise_level, args.t_cap, args.mean, args.kl_exact = 0.7, 0.96, 1, 1
    args.partial_lp = args.logp = times.data_ptr()
    assert lib.fg_validate(ctypes.byref(args), 0) == 0
    args.t_cap = 1.0
    assert b"t_cap" in lib.fg_error_string(lib.fg_validate(ctypes.byref(args), 0))
    args.t_cap, args.x_next = 0.96, cuda_backend._rows(x.float())
    assert lib.fg_validate(ctypes.byref(args), 0) == 3  # FG_E_SHAPE: x_next must have x's dtype


def test_native_philox_words_equal_the_reference(library_file):
    """The Philox of csrc/fastgrpo_philox.h (the kernels' own code, run on the host) gives philox.py's words."""
    lib = ctypes.CDLL(str(library_file))
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 2**32, (64, 6), generator=gen, dtype=torch.int64)
    rows[0] = 0
    rows[1] = 2**32 - 1
    want = torch.stack(philox4x32(*rows[:, :4].unbind(1), *rows[:, 4:].unbind(1)), dim=1)
    counter, key, out = (ctypes.c_uint32 * 4)(), (ctypes.c_uint32 * 2)(), (ctypes.c_uint32 * 4)()
    for row, expected in zip(rows.tolist(), want.tolist(), strict=True):
        counter[:], key[:] = row[:4], row[4:]
        lib.fg_philox_host(counter, key, out)
        assert list(out) == expected


def test_cuda_backend_needs_cuda_tensors(library_file, monkeypatch):
    monkeypatch.setenv("FASTGRPO_CUDA_LIB", str(library_file))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        _checks.resolve_backend("cuda", torch.device("cpu"))


def test_missing_library_gives_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGRPO_CUDA_LIB", str(tmp_path / "absent" / cuda_backend.LIBRARY_NAME))
    x = torch.randn(2, 8, 8)
    with pytest.raises(ValueError, match=r"cmake -S \. -B build && cmake --build build"):
        sde_step(x, x, 0.8, 0.7, seed=1, backend="cuda", **KW)
    with pytest.raises(ValueError, match="FASTGRPO_CUDA_LIB"):
        step_logprob(x, x, x, 0.8, 0.7, backend="cuda", **KW)
    assert not cuda_backend.is_available()


def test_unknown_backend_lists_cuda():
    with pytest.raises(ValueError, match="'cuda'"):
        _checks.resolve_backend("native", torch.device("cpu"))


# --- on a GPU ------------------------------------------------------------------------------------------------------


@pytest.fixture
def on_gpu(monkeypatch, request):
    """Use the library of this session's build (or FASTGRPO_CUDA_LIB / build/ when cmake is absent)."""
    if shutil.which("cmake") and _tool("nvcc"):
        monkeypatch.setenv("FASTGRPO_CUDA_LIB", str(request.getfixturevalue("library_file")))
    if not cuda_backend.is_available():
        pytest.skip(f"the native library is not built ({cuda_backend.library_path()})")


def _latents(b: int, n: int, dtype: torch.dtype, row_pad: int = 0):
    """``x, v [b, n]`` whose rows are ``row_pad`` elements apart beyond n (pad 1 breaks 16-byte alignment)."""
    x = torch.randn(b, n + row_pad, device="cuda").to(dtype)[:, :n]
    v = torch.randn(b, n + row_pad, device="cuda").to(dtype)[:, :n]
    t = torch.linspace(1.0, 0.3, b, device="cuda")
    return x, v, t, t - 0.05


SHAPES = [(3, 4096 * 3), (2, 4096 + 37), (4, 8 * 64 * 5 + 3)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("b", "n"), SHAPES)
@pytest.mark.parametrize("row_pad", [0, 1])
def test_seeded_step_matches_triton_and_reference(on_gpu, dtype, b, n, row_pad):
    x, v, t, tn = _latents(b, n, dtype, row_pad)
    x_cuda, lp_cuda = sde_step(x, v, t, tn, seed=(123, 7), backend="cuda", **KW)
    x_tri, lp_tri = sde_step(x, v, t, tn, seed=(123, 7), backend="triton", **KW)
    noise = philox_normal(123, 7, b, n, "cuda")
    want_x, _ = naive.sde_step_ref(x, v, t, tn, noise, **KW)
    # Same Philox words; the normals differ only by float32 transcendental rounding (a few ulp of n, scaled by
    # s < 1 here), so x_next agrees to one ulp of its dtype plus that float32 slack.
    tol = torch.finfo(dtype).eps * want_x.float().abs() + 1e-5 * (1.0 + noise.abs())
    assert ((x_cuda.float() - x_tri.float()).abs() <= tol).all()
    assert ((x_cuda.float() - want_x.float()).abs() <= tol).all()
    torch.testing.assert_close(lp_cuda, lp_tri, rtol=1e-5, atol=1e-5)
    # The on-policy ratio is exactly 1 within the backend.
    assert torch.equal(step_logprob(x_cuda, x, v, t, tn, backend="cuda", **KW), lp_cuda)


@pytest.mark.gpu
def test_noise_tensor_state_and_ode_step(on_gpu):
    x, v, t, tn = _latents(2, 4096 * 2 + 5, torch.bfloat16)
    noise = torch.randn(x.shape, device="cuda")
    eps = torch.finfo(torch.bfloat16).eps  # one bf16 ulp of the stored x_next
    a = sde_step(x, v, t, tn, noise=noise, backend="cuda", **KW)
    b = sde_step(x, v, t, tn, noise=noise, backend="triton", **KW)
    torch.testing.assert_close(a[0].float(), b[0].float(), rtol=eps, atol=eps)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)
    state = torch.tensor([5, 9], dtype=torch.int64, device="cuda")
    seeded = sde_step(x, v, t, tn, seed=state, backend="cuda", **KW)
    assert state.tolist() == [5, 10]  # advanced on the device after the draw
    assert torch.equal(seeded[0], sde_step(x, v, t, tn, seed=(5, 9), backend="cuda", **KW)[0])
    ode, logp = sde_step(x, v, t, tn, noise_level=0.0, t_cap=0.96, backend="cuda")
    want = x.float() + (tn - t)[:, None] * v.float()
    torch.testing.assert_close(ode.float(), want, rtol=eps, atol=eps)
    assert torch.equal(logp, torch.zeros_like(logp))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["exact", "flow_grpo"])
def test_logprob_kl_and_gradients_match_reference(on_gpu, dtype, form):
    x, v, t, tn = _latents(3, 4096 * 2 + 100, dtype)
    x_next = (x.float() + 0.05 * torch.randn_like(x, dtype=torch.float32)).to(dtype)
    v_ref = (v.float() + 0.1 * torch.randn_like(v, dtype=torch.float32)).to(dtype)
    g_lp, g_kl = torch.randn(3, device="cuda"), torch.randn(3, device="cuda")
    results = {}
    for backend in ("cuda", "triton"):
        vv = v.clone().requires_grad_(True)
        lp, kl = logprob_kl(x_next, x, vv, v_ref, t, tn, form=form, backend=backend, **KW)
        ((lp * g_lp).sum() + (kl * g_kl).sum()).backward()
        results[backend] = (lp, kl, vv.grad)
    v64 = v.double().requires_grad_(True)
    lp64 = naive.step_logprob_ref(x_next.double(), x.double(), v64, t, tn, **KW)
    kl64 = naive.velocity_kl_ref(v64, v_ref.double(), t, tn, form=form, **KW)
    ((lp64 * g_lp).sum() + (kl64 * g_kl).sum()).backward()
    lp, kl, grad = results["cuda"]
    torch.testing.assert_close(lp.double(), lp64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl.double(), kl64, rtol=1e-4, atol=1e-6)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(grad.double(), v64.grad, rtol=tol, atol=tol * v64.grad.abs().max().item())
    for got, want in zip(results["cuda"], results["triton"], strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.float().abs().max().item())


@pytest.mark.gpu
def test_mixed_dtypes_and_4d_latents(on_gpu):
    x = torch.randn(2, 16, 24, 40, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 16, 24, 40, device="cuda")  # float32 velocity beside bfloat16 latents
    a = sde_step(x, v, 0.9, 0.8, seed=(1, 2), backend="cuda", **KW)
    b = sde_step(x, v, 0.9, 0.8, seed=(1, 2), backend="triton", **KW)
    assert a[0].shape == x.shape and a[0].dtype == x.dtype
    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(a[0].float(), b[0].float(), rtol=eps, atol=eps)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_replay_draws_fresh_noise(on_gpu):
    x, v, t, tn = _latents(4, 4096 + 512, torch.bfloat16)
    state = torch.tensor([5, 0], dtype=torch.int64, device="cuda")
    draws = replay_sde_graph(
        lambda: sde_step(x, v, t, tn, seed=state, backend="cuda", **KW), state, offset=100, replays=2
    )
    assert state.tolist() == [5, 102]  # each replay reads the offset on the device and advances it
    assert not torch.equal(draws[0], draws[1])
    for k, draw in enumerate(draws):
        assert torch.equal(draw, sde_step(x, v, t, tn, seed=(5, 100 + k), backend="cuda", **KW)[0])
