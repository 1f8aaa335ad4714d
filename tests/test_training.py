"""Training helpers: float16 weight storage (no PyTorch needed) and distillation targets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from moodlens.models import session
from moodlens.models.onnx_utils import store_weights_float16


def _matmul_model(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_float16_storage_halves_the_file_and_keeps_float32_outputs():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(256, 64)).astype(np.float32), rng.normal(size=64).astype(np.float32)
    model = _matmul_model(w, b)
    half = store_weights_float16(model)
    assert len(half.SerializeToString()) < 0.55 * len(model.SerializeToString())
    kinds = {i.name: i.data_type for i in half.graph.initializer}
    assert kinds == {"w_fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}  # small tensors stay float32
    x = rng.normal(size=(8, 256)).astype(np.float32)
    y32 = session(model.SerializeToString(), 1).run(None, {"x": x})[0]
    y16 = session(half.SerializeToString(), 1).run(None, {"x": x})[0]
    assert y16.dtype == np.float32
    np.testing.assert_allclose(y16, x @ w.astype(np.float16).astype(np.float32) + b, rtol=1e-4, atol=1e-3)
    assert np.abs(y16 - y32).max() < 0.05 * np.abs(y32).max()


def test_teacher_targets_average_teachers_and_mirror_images(tmp_path):
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from dataclasses import asdict

    from moodlens.training.net import EmotionNet
    from moodlens.training.train import TrainConfig, evaluate, teacher_targets

    cfg = TrainConfig(widths=(8, 8, 16, 16), depths=(1, 1, 1))
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = EmotionNet(cfg.widths, cfg.depths)
        ema = torch.optim.swa_utils.AveragedModel(net, use_buffers=True)
        path = tmp_path / f"t{seed}.pt"
        torch.save({"ema": ema.state_dict(), "config": asdict(cfg)}, path)
        paths.append((str(path), net.eval()))
    x = np.random.default_rng(0).integers(0, 255, (5, 48, 48), dtype=np.uint8)
    soft = teacher_targets(tuple(p for p, _ in paths), x)
    mirror = np.ascontiguousarray(x[:, :, ::-1])
    expected = sum(evaluate(n, x) + evaluate(n, mirror) for _, n in paths) / 4
    assert soft.shape == (5, 8)
    np.testing.assert_allclose(soft, expected, atol=1e-5)
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-5)
    # a face and its mirror image get the same target
    np.testing.assert_allclose(teacher_targets((paths[0][0],), mirror), teacher_targets((paths[0][0],), x), atol=1e-5)


def test_sface_backbone_is_the_registry_model_on_grey_faces():
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from moodlens.models import sface_model
    from moodlens.training.sface_net import SFaceExpressionNet

    model = sface_model()
    last = [n for n in model.graph.node if n.op_type == "PRelu"][-1].output[0]
    model.graph.output.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, None))
    grey = np.random.default_rng(0).random((1, 1, 112, 112), dtype=np.float32)
    sess = session(model, 1)
    ref = sess.run([last], {sess.get_inputs()[0].name: np.repeat(grey * 255, 3, 1)})[0]
    net = SFaceExpressionNet().eval()
    with torch.no_grad():
        feats = net.body((torch.from_numpy(grey) * 255 - 127.5) / 128).numpy()
        probs = torch.softmax(net(torch.from_numpy(grey[:, :, :64, :64])), 1).numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-4 * np.abs(ref).max())
    assert probs.shape == (1, 8)  # any input size: pooled, not flattened


def test_teacher_at_another_size_sees_faces_aligned_at_its_size(tmp_path):
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from dataclasses import asdict

    from moodlens.training.net import EmotionNet
    from moodlens.training.train import TrainConfig, evaluate, teacher_targets

    cfg = TrainConfig(widths=(8, 8, 16, 16), depths=(1, 1, 1), size=64)
    torch.manual_seed(0)
    net = EmotionNet(cfg.widths, cfg.depths)
    path = tmp_path / "t64.pt"
    torch.save({"ema": torch.optim.swa_utils.AveragedModel(net, use_buffers=True).state_dict(), "config": asdict(cfg)}, path)
    rng = np.random.default_rng(0)
    x48, x64 = rng.integers(0, 255, (3, 48, 48), dtype=np.uint8), rng.integers(0, 255, (3, 64, 64), dtype=np.uint8)
    asked = []
    soft = teacher_targets((str(path),), x48, images_at=lambda s: asked.append(s) or x64)
    assert asked == [64]
    expected = (evaluate(net.eval(), x64) + evaluate(net, np.ascontiguousarray(x64[:, :, ::-1]))) / 2
    np.testing.assert_allclose(soft, expected, atol=1e-5)
