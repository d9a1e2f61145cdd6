"""The ASR model: features equal torchaudio's, streaming equals the whole recording, ONNX Runtime equals PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchaudio
from memstream.memory import CoreConfig
from memstream.models import build, list_models
from memstream.models.asr import CHARS, AsrConfig, AsrModel

TINY_CORE = dict(dim=32, heads=2, layers=2, ff_mult=2, segment=4, memory_length=8, num_tokens=4,
                 knn_capacity=64, knn_topk=4)


def tiny_asr(memory: str = "queue", seed: int = 0, **overrides) -> AsrModel:
    torch.manual_seed(seed)
    core_over = {k: v for k, v in overrides.items() if k in TINY_CORE or k in ("write_gate", "causal")}
    rest = {k: v for k, v in overrides.items() if k not in core_over}
    model = AsrModel(AsrConfig(core=CoreConfig(**{**TINY_CORE, "memory": memory, **core_over}), channels=8, **rest))
    with torch.no_grad():  # non-trivial normalisation, as after training
        model.features.mean.uniform_(-8, -2)
        model.features.std.uniform_(1, 3)
    return model.eval()


def stream(model: AsrModel, audio: torch.Tensor, lengths: torch.Tensor, reset_at: int | None = None):
    s = model.cfg.segment_samples
    padded = model.pad(audio)
    mask = torch.arange(padded.shape[1]) < lengths.unsqueeze(1)
    state, outs = model.init_state(audio.shape[0]), []
    for i in range(0, padded.shape[1], s):
        reset = torch.full((audio.shape[0],), reset_at == i // s)
        out, state = model.step(padded[:, i:i + s], state, reset, mask[:, i:i + s])
        outs.append(out.log_probs)
    return torch.cat(outs, 1), state


def test_features_equal_torchaudio_melspectrogram():
    model = tiny_asr()
    cfg = model.cfg
    x = torch.randn(2, 16000) * 0.3
    ours = model.features.raw(F.pad(x, (cfg.win - cfg.hop, 0)).unfold(1, cfg.win, cfg.hop))  # (B, 100, 80)
    # torchaudio centres the 400-sample window in the 512-sample frame: shift so both frames start together.
    offset = (cfg.n_fft - cfg.win) // 2
    mel = torchaudio.transforms.MelSpectrogram(cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win, hop_length=cfg.hop,
                                               f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, center=False,
                                               power=2.0, norm=None, mel_scale="htk")
    ref = torch.log(mel(F.pad(x, (cfg.win - cfg.hop + offset, cfg.n_fft))) + 1e-6).transpose(1, 2)
    n = ours.shape[1]
    torch.testing.assert_close(ours, ref[:, :n], atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("memory", ["queue", "none", "tokens", "ntm"])
def test_streaming_equals_whole_recording(memory):
    model = tiny_asr(memory)
    s = model.cfg.segment_samples
    audio = torch.randn(3, 5 * s - 700) * 0.2
    lengths = torch.tensor([audio.shape[1], 3 * s + 11, s - 5])
    with torch.no_grad():
        whole, valid = model.forward_sequence(audio, lengths)
        streamed, _ = stream(model, audio, lengths)
    assert whole.shape == (3, 5 * model.cfg.core.segment, len(CHARS))
    assert valid.sum(1).tolist() == [-(-int(n) // (s // model.cfg.core.segment)) for n in lengths]
    torch.testing.assert_close(streamed[valid], whole[valid], atol=1e-5, rtol=1e-5)


def test_reset_starts_the_stream_anew():
    model = tiny_asr()
    s = model.cfg.segment_samples
    audio = torch.randn(1, 6 * s) * 0.2
    lengths = torch.tensor([6 * s])
    with torch.no_grad():
        streamed, _ = stream(model, audio, lengths, reset_at=3)
        fresh, _ = model.forward_sequence(audio[:, 3 * s:])
    torch.testing.assert_close(streamed[:, 3 * model.cfg.core.segment:], fresh, atol=1e-5, rtol=1e-5)


def test_state_is_fixed_size_and_covers_the_front_end():
    model = tiny_asr()
    spec = model.state_spec(2)
    assert list(spec)[:3] == ["audio_tail", "feat_tail", "conv_tail"]
    state = model.init_state(2)
    with torch.no_grad():
        _, after = stream(model, torch.randn(2, 7 * model.cfg.segment_samples), torch.tensor([10**6] * 2))
    assert [t.shape for t in after] == [t.shape for t in state]


def test_full_context_baseline_sees_the_whole_recording():
    model = tiny_asr("none", full_context=True)
    s = model.cfg.segment_samples
    audio = torch.randn(1, 4 * s) * 0.2
    with torch.no_grad():
        out, _ = model.forward_sequence(audio)
        changed = audio.clone()
        changed[:, -s:] = 0
        out2, _ = model.forward_sequence(changed)
    # Unlike a segment-local model, changing the last segment changes the first frame.
    assert not torch.allclose(out[:, 0], out2[:, 0])
    with pytest.raises(ValueError, match="full_context needs core.memory='none'"):
        tiny_asr("queue", full_context=True)


def test_config_errors_name_the_value():
    core = CoreConfig(**TINY_CORE)
    with pytest.raises(ValueError, match="vocab must start with the blank"):
        AsrConfig(core=core, vocab=("a", "b"))
    with pytest.raises(ValueError, match="hop <= win <= n_fft"):
        AsrConfig(core=core, win=600)
    with pytest.raises(ValueError, match="unknown field"):
        AsrConfig.from_dict({"core": core.to_dict(), "bogus": 1})
    cfg = AsrConfig(core=core)
    assert AsrConfig.from_dict(cfg.to_dict()) == cfg


def test_presets_are_registered_and_small():
    assert {"asr-small", "asr-base"} <= set(list_models())
    small = build("asr-small")
    params = sum(p.numel() for p in small.parameters())
    assert params * 4 < 5_000_000, params  # the bundled checkpoint stays a few MB
    assert small.cfg.segment_samples == 10240 and small.cfg.frame_seconds == pytest.approx(0.04)
    assert build("asr-small", memory="ntm").cfg.core.memory == "ntm"


@pytest.mark.parametrize("opset", [23, 18])
def test_onnx_runtime_equals_pytorch(tmp_path, opset):
    pytest.importorskip("onnxruntime")
    from memstream.export import OnnxBackend, TorchBackend, export_step

    model = tiny_asr()
    s = model.cfg.segment_samples
    path = tmp_path / "asr.onnx"
    export_step(model, path, torch.zeros(2, s), opset=opset, metadata={"rate": 16000})
    ort, eager = OnnxBackend(path, providers=["CPUExecutionProvider"]), TorchBackend(model)
    assert ort.output_names == ["log_probs"] and ort.fields == list(model.state_spec(1))
    g = torch.Generator().manual_seed(1)
    b = 3
    s_ort, s_eager = ort.init_state(b), eager.init_state(b)
    for i in range(40):
        x = torch.randn(b, s, generator=g) * 0.3
        reset = torch.rand(b, generator=g) < 0.1
        n = torch.randint(1, s + 1, (b,), generator=g) if i % 7 == 6 else torch.full((b,), s)
        mask = torch.arange(s) < n.unsqueeze(1)
        o1, s_ort = ort.step(x, s_ort, reset, mask)
        o2, s_eager = eager.step(x, s_eager, reset, mask)
        torch.testing.assert_close(o1, o2.log_probs, atol=2e-4, rtol=1e-4)
    for a, e in zip(s_ort, s_eager, strict=True):
        torch.testing.assert_close(a, e, atol=2e-4, rtol=1e-4)
