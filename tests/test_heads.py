"""Margin heads against independent float64 numpy references: logits, gradients, state updates, numerics."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.heads import HEADS, MarginHead, available, get_head

N, D, C = 6, 4, 5
CLIP = float(np.float32(1 - 1e-7))  # the heads clip cos to [-1 + 1e-7, 1 - 1e-7] in float32


# ---------------------------------------------------------------- the small problem and numpy references


def make_problem(seed=0):
    """float32 embeddings [N, D], kernel [D, C], labels [N]; example 0 has cos theta_y = +1, example 1 has -1,
    example 2 is parallel to a class that is not its label."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(D, C)).astype(np.float32)
    embeddings = rng.normal(size=(N, D)).astype(np.float32)
    labels = np.array([1, 3, 0, 2, 4, 1], dtype=np.int32)
    embeddings[0] = 2.0 * kernel[:, labels[0]]
    embeddings[1] = -0.5 * kernel[:, labels[1]]
    embeddings[2] = 4.0 * kernel[:, 2]
    return embeddings, kernel, labels


def np_cosine(x, w):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))


def np_angle(cosine):
    return np.arccos(np.clip(cosine, -CLIP, CLIP))


def with_target(others, target, labels):
    """others [N, C] with column labels[i] of row i replaced by target[i]."""
    out = others.copy()
    out[np.arange(len(labels)), labels] = target
    return out


def ref_softmax(x, w, y, bias):
    logits = x @ w + bias
    return logits, logits


def ref_scaled(target_fn, s):
    """Reference for heads with logits s * cos theta_j and target s * target_fn(cos theta_y)."""

    def reference(x, w, y):
        cos = np_cosine(x, w)
        return s * with_target(cos, target_fn(cos[np.arange(len(y)), y]), y), s * cos

    return reference


def arcface_target(cos, m):
    theta = np_angle(cos)
    return np.where(theta + m < math.pi, np.cos(theta + m), cos - math.sin(math.pi - m) * m)


BIAS = np.linspace(-0.2, 0.3, C).astype(np.float32)

# id -> (registry name, options, numpy reference (x, w, y) -> (logits, plain_logits), prepare(head))
CASES = {
    "softmax": ("softmax", {}, lambda x, w, y: ref_softmax(x, w, y, BIAS), lambda h: h.bias.assign(BIAS)),
    "arcface": ("arcface", {}, ref_scaled(lambda c: arcface_target(c, 0.5), 64.0), None),
    "arcface_s8_m0.3": ("arcface", {"scale": 8.0, "margin": 0.3}, ref_scaled(lambda c: arcface_target(c, 0.3), 8.0), None),
}


def build_head(case_id):
    name, options, _, prepare = CASES[case_id]
    embeddings, kernel, _ = make_problem()
    head = get_head(name, C, **options)
    head.build((None, D))
    head.kernel.assign(kernel)
    if prepare is not None:
        prepare(head)
    return head


LOGIT_WEIGHTS, PLAIN_WEIGHTS = np.random.default_rng(7).normal(size=(2, N, C)).astype(np.float32)


def margin_and_plain_loss(logits, plain):
    """A fixed random linear functional of both outputs (numpy or tf), so its gradient checks the whole Jacobian."""
    return keras.ops.sum(LOGIT_WEIGHTS * logits) + keras.ops.sum(PLAIN_WEIGHTS * plain)


def finite_difference(f, value, step=1e-6):
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        plus, minus = value.copy(), value.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (f(plus) - f(minus)) / (2 * step)
    return grad


# ---------------------------------------------------------------- every head: values, gradients, no NaN


@pytest.mark.parametrize("case_id", list(CASES))
def test_logits_match_numpy_reference(case_id):
    head = build_head(case_id)
    embeddings, kernel, labels = make_problem()
    reference = CASES[case_id][2]
    want_logits, want_plain = reference(embeddings.astype(np.float64), kernel.astype(np.float64), labels)
    out = head(embeddings, labels)
    assert set(out) == {"logits", "plain_logits"}
    for key, want in (("logits", want_logits), ("plain_logits", want_plain)):
        got = out[key]
        assert got.dtype == tf.float32 and tuple(got.shape) == (N, C)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4, err_msg=key)
    without_labels = head(embeddings)
    np.testing.assert_allclose(without_labels["logits"].numpy(), want_plain, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(without_labels["plain_logits"].numpy(), want_plain, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case_id", list(CASES))
def test_gradients_match_finite_differences(case_id):
    head = build_head(case_id)
    embeddings, kernel, labels = make_problem()
    reference = CASES[case_id][2]
    x64, w64 = embeddings.astype(np.float64), kernel.astype(np.float64)

    def loss_of(x, w):
        logits, plain = reference(x, w, labels)
        return np.sum(LOGIT_WEIGHTS * logits) + np.sum(PLAIN_WEIGHTS * plain)

    want_dx = finite_difference(lambda x: loss_of(x, w64), x64)
    want_dw = finite_difference(lambda w: loss_of(x64, w), w64)
    x = tf.constant(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = head(x, labels)
        loss = margin_and_plain_loss(out["logits"], out["plain_logits"])
    got_dx, got_dw = (g.numpy() for g in tape.gradient(loss, [x, head.kernel]))
    assert np.isfinite(got_dx).all() and np.isfinite(got_dw).all()
    scale = max(1.0, np.abs(want_dx).max(), np.abs(want_dw).max())
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-4, atol=2e-5 * scale, err_msg="d/d embeddings")
    np.testing.assert_allclose(got_dw, want_dw, rtol=1e-4, atol=2e-5 * scale, err_msg="d/d kernel")


@pytest.mark.parametrize("case_id", list(CASES))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_embeddings_give_finite_float32_logits_and_gradients(case_id, dtype):
    head = build_head(case_id)
    embeddings, _, labels = make_problem()
    x = tf.cast(tf.constant(embeddings), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = head(x, labels, training=True)
        loss = margin_and_plain_loss(out["logits"], out["plain_logits"])
    grad_x, grad_w = tape.gradient(loss, [x, head.kernel])
    for value in (out["logits"], out["plain_logits"]):
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()).all()
    assert np.isfinite(grad_x.numpy().astype(np.float32)).all() and np.isfinite(grad_w.numpy()).all()
    reference = CASES[case_id][2]
    rounded = x.numpy().astype(np.float64)
    want_logits, _ = reference(rounded, build_head(case_id).kernel.numpy().astype(np.float64), labels)
    np.testing.assert_allclose(out["logits"].numpy(), want_logits, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("case_id", list(CASES))
def test_config_round_trip_keeps_hyper_parameters(case_id):
    head = build_head(case_id)
    config = head.get_config()
    assert config["num_classes"] == C
    clone = type(head).from_config(config)
    assert clone.get_config() == config
    for option, value in CASES[case_id][1].items():
        assert getattr(head, option) == value and config[option] == value


# ---------------------------------------------------------------- softmax and arcface specifics


def test_softmax_owns_kernel_and_bias_and_bias_gradient_is_closed_form():
    head = build_head("softmax")
    assert head.kernel.path.endswith("kernel") and tuple(head.kernel.shape) == (D, C)
    assert tuple(head.bias.shape) == (C,)
    embeddings, _, labels = make_problem()
    with tf.GradientTape() as tape:
        out = head(embeddings, labels)
        loss = margin_and_plain_loss(out["logits"], out["plain_logits"])
    np.testing.assert_allclose(
        tape.gradient(loss, head.bias).numpy(), (LOGIT_WEIGHTS + PLAIN_WEIGHTS).sum(axis=0), rtol=1e-5
    )


def test_arcface_target_is_decreasing_on_zero_to_pi_and_uses_fallback_past_pi_minus_margin():
    margin = 0.5
    head = get_head("arcface", 1, scale=1.0, margin=margin)
    head.build((None, 2))
    head.kernel.assign([[1.0], [0.0]])
    theta = np.linspace(0.0, math.pi, 721)
    embeddings = np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)
    target = head(embeddings, np.zeros(len(theta), np.int32))["logits"].numpy()[:, 0]
    assert np.all(np.diff(target) <= 1e-6), "target logit must not increase with theta"
    assert target[-1] < target[0] - 1.9
    past = theta > math.pi - margin + 1e-3
    np.testing.assert_allclose(target[past], np.cos(theta[past]) - math.sin(math.pi - margin) * margin, atol=1e-5)
    assert np.any(np.diff(np.cos(theta + margin)) > 0), "plain cos(theta + m) would rise again past pi - m"


# ---------------------------------------------------------------- registry and input errors


def test_registry_lists_heads_and_names_unknown_ones():
    assert {"softmax", "arcface"} <= set(available()) and available() == HEADS.available()
    with pytest.raises(ValueError, match="'nope'.*arcface"):
        get_head("nope", C)
    with pytest.raises(ValueError, match="bogus"):
        get_head("arcface", C, bogus=1)
    assert isinstance(get_head("arcface", C), MarginHead)


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("arcface", {"scale": 0.0}, "scale"),
        ("arcface", {"margin": -0.1}, "margin"),
        ("arcface", {"margin": 4.0}, "margin"),
        ("softmax", {"num_classes": 0}, "num_classes"),
        ("arcface", {"num_classes": 2.5}, "num_classes"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(name, options, field):
    num_classes = options.pop("num_classes", C)
    with pytest.raises(ValueError, match=field):
        get_head(name, num_classes, **options)


def test_bad_labels_and_embeddings_are_rejected_clearly():
    head = build_head("arcface")
    embeddings, _, labels = make_problem()
    with pytest.raises(ValueError, match="labels must be class ids of shape \\[N\\]"):
        head(embeddings, labels[:, None])
    with pytest.raises(ValueError, match="labels must be integer"):
        head(embeddings, labels.astype(np.float32))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        get_head("arcface", C).build((None, 2, D))
