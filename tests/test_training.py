"""Training helpers: float16 weight storage (no PyTorch needed) and distillation targets."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from moodlens.models import session
from moodlens.models.onnx_utils import quantize_int8, store_weights_float16


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


def _conv_model(rng) -> onnx.ModelProto:
    """face (N, 1, 16, 16) -> 3x3 conv (8) -> ReLU -> average pool -> 4-way softmax."""
    w = rng.normal(scale=0.5, size=(8, 1, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(8, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["face", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["z"]), helper.make_node("Softmax", ["z"], ["probabilities"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("face", TensorProto.FLOAT, ["n", 1, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(8, np.float32), "b"),
         numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(4, np.float32), "fb")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_int8_export_is_integer_close_to_float_and_reproducible():
    rng = np.random.default_rng(0)
    model = _conv_model(rng)
    faces = rng.integers(0, 256, size=(300, 16, 16), dtype=np.uint8)
    blob = quantize_int8(model, faces, n=128)
    assert blob == quantize_int8(model, faces, n=128)  # same calibration faces, same bytes (the card's hash)
    q = onnx.load_from_string(blob)
    weights = {i.name: i.data_type for i in q.graph.initializer}
    assert TensorProto.INT8 in weights.values()  # weights stored as integers, not float
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    x = faces[:, None].astype(np.float32) / 255
    p32 = session(model.SerializeToString(), 1).run(None, {"face": x})[0]
    p8 = session(blob, 1).run(None, {"face": x})[0]
    assert np.abs(p8 - p32).max() < 0.05
    assert (p8.argmax(1) == p32.argmax(1)).mean() > 0.9
    # the head stays float: probabilities sum to one and are not rounded to 1/255 steps
    np.testing.assert_allclose(p8.sum(1), 1, atol=1e-5)
    assert not np.allclose(p8 * 255, np.round(p8 * 255), atol=1e-3)


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


def test_ensemble_folds_into_one_graph_averaging_probabilities(tmp_path):
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from moodlens.training.export import _MeanProbabilities
    from moodlens.training.net import EmotionNet

    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(EmotionNet((8, 8, 16, 16), (1, 1, 1)).eval())
    model = _MeanProbabilities(nets).eval()
    x = torch.rand(5, 1, 48, 48)
    with torch.no_grad():
        expected = (torch.softmax(nets[0](x), 1) + torch.softmax(nets[1](x), 1)) / 2
    path = tmp_path / "ens.onnx"
    torch.onnx.export(model, x[:1], str(path), input_names=["face"], output_names=["probabilities"],
                      dynamic_axes={"face": {0: "batch"}}, opset_version=17, dynamo=False)
    got = session(path.read_bytes(), 1).run(None, {"face": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert not np.allclose(expected.numpy(), torch.softmax(nets[0](x), 1).detach().numpy(), atol=1e-3)  # members differ


def test_leaky_sface_exports_fused_leaky_relu_matching_torch():
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from moodlens.training.sface_net import SFaceExpressionNet, layer_slopes

    prelu = SFaceExpressionNet().eval()
    state = layer_slopes(prelu.state_dict())
    net = SFaceExpressionNet(pretrained=False, activation="leaky").eval()
    net.load_state_dict(state)  # a PReLU run's weights warm-start the leaky variant
    first = prelu.body[0][2].weight.detach()
    assert float(net.body[0][2].slope) == pytest.approx(float(first.median()))
    with torch.no_grad():
        net.body[3][2].slope.fill_(-0.3)  # a negative slope must survive export too
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        expected = torch.softmax(net(x), 1).numpy()
    buf = io.BytesIO()
    torch.onnx.export(net, x[:1], buf, input_names=["face"], dynamic_axes={"face": {0: "batch"}}, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    ops = [n.op_type for n in model.graph.node]
    assert "PRelu" not in ops and ops.count("LeakyRelu") == len(net.body)
    alphas = [helper.get_attribute_value(n.attribute[0]) for n in model.graph.node if n.op_type == "LeakyRelu"]
    assert alphas[3] == pytest.approx(-0.3)
    logits = session(buf.getvalue(), 1).run(None, {"face": x.numpy()})[0]
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), expected, atol=1e-4)


def test_ensemble_of_two_input_sizes_resizes_in_the_graph(tmp_path):
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    import torch.nn.functional as F

    from moodlens.training.export import _MeanProbabilities
    from moodlens.training.net import EmotionNet

    torch.manual_seed(3)
    small, large = EmotionNet((8, 8, 16, 16), (1, 1, 1)).eval(), EmotionNet((8, 8, 16, 16), (1, 1, 1)).eval()
    model = _MeanProbabilities([small, large], [48, 64]).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        at48 = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
        expected = (torch.softmax(small(at48), 1) + torch.softmax(large(x), 1)) / 2
    buf = io.BytesIO()
    torch.onnx.export(model, x[:1], buf, input_names=["face"], dynamic_axes={"face": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    assert sum(n.op_type == "Resize" for n in onnx.load_from_string(buf.getvalue()).graph.node) == 1
    got = session(buf.getvalue(), 1).run(None, {"face": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_online_teachers_judge_the_augmented_batch_each_at_its_own_size(tmp_path):
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    import torch.nn.functional as F
    from dataclasses import asdict

    from moodlens.training.net import EmotionNet
    from moodlens.training.train import TrainConfig, load_teacher, online_teacher_targets

    nets = []
    for seed, size in ((1, 48), (2, 64)):
        cfg = TrainConfig(widths=(8, 8, 16, 16), depths=(1, 1, 1), size=size)
        torch.manual_seed(seed)
        net = EmotionNet(cfg.widths, cfg.depths)
        path = tmp_path / f"t{size}.pt"
        torch.save({"ema": torch.optim.swa_utils.AveragedModel(net, use_buffers=True).state_dict(), "config": asdict(cfg)}, path)
        nets.append((net.eval(), size))
    teachers = [load_teacher(str(tmp_path / f"t{s}.pt")) for s in (48, 64)]
    assert [s for _, s in teachers] == [48, 64] and not any(n.training for n, _ in teachers)
    x = torch.rand(6, 1, 48, 48)
    soft = online_teacher_targets(teachers, x)
    with torch.no_grad():
        up = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        expected = (torch.softmax(nets[0][0](x), 1) + torch.softmax(nets[1][0](up), 1)) / 2
    torch.testing.assert_close(soft, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(soft.sum(1), torch.ones(6), atol=1e-5, rtol=0)
    assert not soft.requires_grad  # targets, not a path for the student's gradient
    # the target follows the view: a face blacked out gets another target than the face itself
    blank = x.clone()
    blank[:3] = 0
    assert (online_teacher_targets(teachers, blank)[:3] - soft[:3]).abs().max() > 1e-4


def test_warmup_ema_forgets_the_start_within_a_short_run_and_settles_on_the_fixed_decay():
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from moodlens.training.train import warmup_ema

    net = torch.nn.Linear(3, 2)
    torch.nn.init.zeros_(net.weight)
    avg = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=warmup_ema(0.999))
    avg.update_parameters(net)  # the first update copies the start: all zeros
    torch.nn.init.ones_(net.weight)
    for _ in range(200):
        avg.update_parameters(net)
    left = np.prod([min(0.999, (1 + n) / (10 + n)) for n in range(1, 201)])  # share of the start still held
    np.testing.assert_allclose(avg.module.weight.detach().numpy(), 1 - left, rtol=1e-5)
    assert left < 0.06 < 0.999**200  # a fixed 0.999 would still hold 82 % of the start
    # long runs: past (1 + n) / (10 + n) > 0.999 the decay is the fixed one
    update, e, c = warmup_ema(0.999), [torch.zeros(4)], [torch.ones(4)]
    update(e, c, torch.tensor(20_000))
    torch.testing.assert_close(e[0], torch.full((4,), 0.001))
