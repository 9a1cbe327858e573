"""Margin heads against independent float64 numpy references: logits, gradients, state updates, numerics."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.heads import HEADS, MarginHead, available, get_head
from tfface.heads.sphereface import annealed_lambda, sphereface_psi
from tfface.training.strategy import mirrored_strategy

N, D, C = 6, 4, 5
CLIP = float(np.float32(1 - 1e-7))  # the heads clip cos to [-1 + 1e-7, 1 - 1e-7] in float32


# ---------------------------------------------------------------- the small problem and numpy references


def make_problem(seed=0):
    """float32 embeddings [N, D], kernel [D, C], labels [N]; example 0 has cos theta_y = +1, example 1 has -1,
    example 2 is parallel to a class that is not its label, example 5 has theta_y = 2.9 (past pi - 0.5)."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(D, C)).astype(np.float32)
    embeddings = rng.normal(size=(N, D)).astype(np.float32)
    labels = np.array([1, 3, 0, 2, 4, 1], dtype=np.int32)
    embeddings[0] = 2.0 * kernel[:, labels[0]]
    embeddings[1] = -0.5 * kernel[:, labels[1]]
    embeddings[2] = 4.0 * kernel[:, 2]
    centre = kernel[:, labels[5]] / np.linalg.norm(kernel[:, labels[5]])
    across = embeddings[5] - (embeddings[5] @ centre) * centre
    embeddings[5] = 1.5 * (math.cos(2.9) * centre + math.sin(2.9) * across / np.linalg.norm(across))
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


def np_psi(theta, m):
    k = np.minimum(np.floor(theta * m / math.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def np_lambda(iteration, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    return max(lambda_min, base * (1 + gamma * iteration) ** -power)


def ref_multiplicative(lam, m, normalise_kernel):
    """SphereFace (kernel normalised) or L-Softmax: scale ||x|| (||W_j||), target blend (lam cos + psi) / (1 + lam)."""

    def reference(x, w, y):
        w_used = w / np.linalg.norm(w, axis=0, keepdims=True) if normalise_kernel else w
        plain = x @ w_used
        cos = np_cosine(x, w)
        cos_y = cos[np.arange(len(y)), y]
        scale_y = np.linalg.norm(x[np.arange(len(y))], axis=1) * np.linalg.norm(w_used[:, y], axis=0)
        target = scale_y * (lam * cos_y + np_psi(np_angle(cos_y), m)) / (1 + lam)
        return with_target(plain, target, y), plain

    return reference


def ref_curricular(t, s=64.0, m=0.5):
    def reference(x, w, y):
        cos = np_cosine(x, w)
        cos_y = cos[np.arange(len(y)), y]
        hard = cos > np.cos(np_angle(cos_y) + m)[:, None]
        others = np.where(hard, cos * (t + cos), cos)
        return s * with_target(others, arcface_target(cos_y, m), y), s * cos

    return reference


def ref_normface_feature_scale(x, w, y):
    logits = np.linalg.norm(x, axis=1, keepdims=True) * np_cosine(x, w)
    return logits, logits


def set_state(name, value):
    return lambda head: getattr(head, name).assign(value)


BIAS = np.linspace(-0.2, 0.3, C).astype(np.float32)
PURE_PSI = {"base": 0.0, "lambda_min": 0.0}

# id -> (registry name, options, numpy reference (x, w, y) -> (logits, plain_logits), prepare(head) or None)
CASES = {
    "softmax": ("softmax", {}, lambda x, w, y: ref_softmax(x, w, y, BIAS), set_state("bias", BIAS)),
    "normface": ("normface", {}, ref_scaled(lambda c: c, 30.0), None),
    "normface_feature_scale": ("normface", {"feature_scale": True}, ref_normface_feature_scale, None),
    "sphereface_pure_psi": ("sphereface", PURE_PSI, ref_multiplicative(0.0, 4, True), None),
    "sphereface_m2_pure_psi": ("sphereface", {"margin": 2, **PURE_PSI}, ref_multiplicative(0.0, 2, True), None),
    "sphereface_it100": ("sphereface", {}, ref_multiplicative(np_lambda(100), 4, True), set_state("iterations", 100)),
    "lsoftmax_pure_psi": ("lsoftmax", PURE_PSI, ref_multiplicative(0.0, 4, False), None),
    "lsoftmax_it1000": ("lsoftmax", {}, ref_multiplicative(np_lambda(1000), 4, False), set_state("iterations", 1000)),
    "cosface": ("cosface", {}, ref_scaled(lambda c: c - 0.35, 64.0), None),
    "arcface": ("arcface", {}, ref_scaled(lambda c: arcface_target(c, 0.5), 64.0), None),
    "arcface_s8_m0.3": (
        "arcface", {"scale": 8.0, "margin": 0.3}, ref_scaled(lambda c: arcface_target(c, 0.3), 8.0), None
    ),
    "combined": ("combined", {}, ref_scaled(lambda c: np.cos(np_angle(c) + 0.3) - 0.2, 64.0), None),
    "combined_m1_2": (
        "combined",
        {"scale": 16.0, "m1": 2.0, "m2": 0.1, "m3": 0.05},
        ref_scaled(lambda c: np.cos(2.0 * np_angle(c) + 0.1) - 0.05, 16.0),
        None,
    ),
    "curricularface_t0.3": ("curricularface", {}, ref_curricular(0.3), set_state("t", 0.3)),
    "linearface": ("linearface", {}, ref_scaled(lambda c: -0.88 * np_angle(c) + 0.88, 64.0), None),
}


def build_head(case_id):
    name, options, _, prepare = CASES[case_id]
    _, kernel, _ = make_problem()
    head = get_head(name, C, **options)
    head.build((None, D))
    head.kernel.assign(kernel)
    if prepare is not None:
        prepare(head)
    return head


LOGIT_WEIGHTS, PLAIN_WEIGHTS = np.random.default_rng(7).normal(size=(2, N, C)).astype(np.float32)


def margin_and_plain_loss(logits, plain):
    """A fixed random linear functional of both head outputs, so its gradient checks the whole Jacobian."""
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
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-3, atol=2e-5 * scale, err_msg="d/d embeddings")
    np.testing.assert_allclose(got_dw, want_dw, rtol=1e-3, atol=2e-5 * scale, err_msg="d/d kernel")


@pytest.mark.parametrize("case_id", list(CASES))
def test_half_precision_embeddings_give_finite_float32_logits_and_gradients(case_id):
    for dtype in ("float16", "bfloat16"):
        check_half_precision(case_id, dtype)


def check_half_precision(case_id, dtype):
    head = build_head(case_id)
    embeddings, kernel, labels = make_problem()
    x = tf.cast(tf.constant(embeddings), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = head(x, labels)
        loss = margin_and_plain_loss(out["logits"], out["plain_logits"])
    grad_x, grad_w = tape.gradient(loss, [x, head.kernel])
    for value in (out["logits"], out["plain_logits"]):
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()).all()
    assert np.isfinite(grad_x.numpy().astype(np.float32)).all() and np.isfinite(grad_w.numpy()).all()
    reference = CASES[case_id][2]
    rounded = x.numpy().astype(np.float64)
    want_logits, _ = reference(rounded, kernel.astype(np.float64), labels)
    np.testing.assert_allclose(out["logits"].numpy(), want_logits, rtol=1e-4, atol=1e-3, err_msg=dtype)


def test_heads_stay_float32_under_a_mixed_precision_policy():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        for name in available():
            head = get_head(name, C)
            out = head(tf.ones((2, D), tf.float16), np.array([0, 1]))
            assert all(weight.dtype == "float32" for weight in head.trainable_weights), name
            assert out["logits"].dtype == tf.float32, name
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_heads_work_in_a_functional_model():
    embeddings, kernel, labels = make_problem()
    inputs = keras.Input((D,)), keras.Input((), dtype="int32")
    head = get_head("arcface", C)
    model = keras.Model(inputs, head(*inputs))
    head.kernel.assign(kernel)
    out = model([embeddings, labels])
    want_logits, want_plain = CASES["arcface"][2](embeddings.astype(np.float64), kernel.astype(np.float64), labels)
    np.testing.assert_allclose(out["logits"].numpy(), want_logits, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["plain_logits"].numpy(), want_plain, rtol=1e-5, atol=1e-4)


def test_config_round_trip_keeps_hyper_parameters():
    for name, options, _, _ in CASES.values():
        head = get_head(name, C, **options)
        config = head.get_config()
        assert config["num_classes"] == C
        assert type(head).from_config(config).get_config() == config
        for option, value in options.items():
            assert getattr(head, option) == value and config[option] == value, (name, option)


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


def test_arcface_easy_margin_keeps_cos_theta_where_it_is_not_positive():
    """insightface's ArcFace option easy_margin: `phi = torch.where(cosine > 0, phi, cosine)`, i.e. the target is
    cos(theta + m) where cos theta > 0 and cos theta itself where cos theta <= 0; the default (easy_margin False)
    keeps insightface's fallback cos theta - m sin(pi - m) past theta = pi - m.

    Targets over theta in (0, pi) against the hand formulas, for both settings."""
    margin = 0.5
    theta = np.linspace(0.01, math.pi - 0.01, 361)  # away from the cos clipping at theta = 0 and pi
    embeddings = np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)
    cos = np.cos(theta)
    targets = {}
    for easy_margin in (True, False):
        head = get_head("arcface", 1, scale=1.0, margin=margin, easy_margin=easy_margin)
        head.build((None, 2))
        head.kernel.assign([[1.0], [0.0]])
        targets[easy_margin] = head(embeddings, np.zeros(len(theta), np.int32))["logits"].numpy()[:, 0]
    easy = np.where(cos > 0, np.cos(theta + margin), cos)
    fallback = np.where(theta < math.pi - margin, np.cos(theta + margin), cos - math.sin(math.pi - margin) * margin)
    near_switch = (np.abs(cos) < 1e-6) | (np.abs(theta - (math.pi - margin)) < 1e-6)
    np.testing.assert_allclose(targets[True][~near_switch], easy[~near_switch], atol=2e-6)
    np.testing.assert_allclose(targets[False][~near_switch], fallback[~near_switch], atol=2e-6)
    obtuse = theta > math.pi / 2 + 1e-3
    assert np.abs(targets[True][obtuse] - targets[False][obtuse]).max() > 0.2
    assert get_head("arcface", C).easy_margin is False
    with pytest.raises(ValueError, match="easy_margin must be true or false"):
        get_head("arcface", C, easy_margin="yes")


# ---------------------------------------------------------------- SphereFace / L-Softmax: psi and lambda


PSI_POINTS = [  # (m, theta / pi, psi by hand)
    (4, 0.0, 1.0),
    (4, 1 / 8, 0.0),  # cos(pi / 2)
    (4, 1 / 4, -1.0),  # k = 1: -cos(pi) - 2
    (4, 3 / 8, -2.0),  # k = 1: -cos(3 pi / 2) - 2
    (4, 1 / 2, -3.0),  # k = 2: cos(2 pi) - 4
    (4, 5 / 8, -4.0),  # k = 2: cos(5 pi / 2) - 4
    (4, 3 / 4, -5.0),  # k = 3: -cos(3 pi) - 6
    (4, 1.0, -7.0),  # k = 3: -cos(4 pi) - 6
    (4, 1 / 6, -0.5),  # cos(2 pi / 3)
    (2, 1 / 4, 0.0),
    (2, 1 / 2, -1.0),
    (2, 3 / 4, -2.0),
    (2, 1.0, -3.0),
    (1, 1 / 3, 0.5),  # m = 1 is plain cos
    (3, 1 / 2, -2.0),  # k = 1: -cos(3 pi / 2) - 2
]


def test_psi_at_hand_computed_points():
    for margin, theta_over_pi, want in PSI_POINTS:
        got = sphereface_psi(tf.constant(theta_over_pi * math.pi, tf.float32), float(margin))
        assert float(got) == pytest.approx(want, abs=1e-5), (margin, theta_over_pi)


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
def test_psi_is_decreasing_continuous_with_closed_form_gradient(margin):
    theta = tf.constant(np.linspace(0.0, math.pi, 2001), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        psi = sphereface_psi(theta, float(margin))
    values = psi.numpy()
    assert np.all(np.diff(values) < 1e-6)
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(1 - 2 * margin)
    for k in range(1, margin):
        edge = k * math.pi / margin
        left, right = sphereface_psi(tf.constant([edge - 1e-4, edge + 1e-4], tf.float32), float(margin)).numpy()
        assert abs(left - right) < 1e-3 and left == pytest.approx(1 - 2 * k, abs=1e-3)
    theta_np = theta.numpy().astype(np.float64)
    sector = np.minimum(np.floor(theta_np * margin / math.pi), margin - 1)
    closed_form = -((-1.0) ** sector) * margin * np.sin(margin * theta_np)
    np.testing.assert_allclose(tape.gradient(psi, theta).numpy(), closed_form, atol=1e-4)


LAMBDA_SCHEDULE = [  # (iteration, options over SphereFace's defaults, lambda by hand)
    (0, {}, 1000.0),
    (1, {}, 1000.0 / 1.12),
    (100, {}, 1000.0 / 13.0),
    (1000, {}, 1000.0 / 121.0),
    (1658, {}, 1000.0 / 199.96),  # still above lambda_min = 5
    (1659, {}, 5.0),
    (100000, {}, 5.0),
    (10, {"power": 2.0}, 1000.0 / 2.2**2),
    (10, {"base": 1500.0, "gamma": 0.01, "lambda_min": 0.0}, 1500.0 / 1.1),
]


def test_lambda_annealing_schedule():
    for iteration, options, want in LAMBDA_SCHEDULE:
        settings = {"base": 1000.0, "gamma": 0.12, "power": 1.0, "lambda_min": 5.0, **options}
        assert float(annealed_lambda(iteration, **settings)) == pytest.approx(want, rel=1e-6), (iteration, options)


@pytest.mark.parametrize("name", ["sphereface", "lsoftmax"])
def test_iteration_counter_advances_once_per_training_call_with_labels(name):
    head = get_head(name, C)
    embeddings, kernel, labels = make_problem()
    head.build((None, D))
    head.kernel.assign(kernel)
    assert not head.iterations.trainable and head.iterations.aggregation == "only_first_replica"
    head(embeddings, labels)
    head(embeddings, labels, training=False)
    head(embeddings, training=True)
    assert int(head.iterations.numpy()) == 0 and float(head.current_lambda()) == pytest.approx(1000.0)
    out = head(embeddings, labels, training=True)
    assert int(head.iterations.numpy()) == 1
    want, _ = ref_multiplicative(1000.0 / 1.12, 4, name == "sphereface")(
        embeddings.astype(np.float64), kernel.astype(np.float64), labels
    )
    np.testing.assert_allclose(out["logits"].numpy(), want, rtol=1e-5, atol=1e-4)
    step = tf.function(lambda x, y: head(x, y, training=True)["logits"])
    for _ in range(3):
        step(embeddings, labels)
    assert int(head.iterations.numpy()) == 4
    assert float(head.current_lambda()) == pytest.approx(np_lambda(4), rel=1e-6)


# ---------------------------------------------------------------- CurricularFace's t


def build_curricularface():
    embeddings, kernel, labels = make_problem()
    head = get_head("curricularface", C)
    head.build((None, D))
    head.kernel.assign(kernel)
    return head, embeddings, kernel, labels


def mean_target_cosine(embeddings, kernel, labels):
    cos = np_cosine(embeddings.astype(np.float64), kernel.astype(np.float64))
    return np.clip(cos[np.arange(len(labels)), labels], -1, 1).mean()


def test_curricularface_t_is_an_ema_of_the_mean_target_cosine_updated_only_in_training():
    head, embeddings, kernel, labels = build_curricularface()
    assert not head.t.trainable and head.t.aggregation == "only_first_replica" and float(head.t.numpy()) == 0.0
    head(embeddings, labels)
    head(embeddings, labels, training=False)
    head(embeddings, training=True)
    assert float(head.t.numpy()) == 0.0
    batch_mean = mean_target_cosine(embeddings, kernel, labels)
    out = head(embeddings, labels, training=True)
    t1 = 0.01 * batch_mean
    assert float(head.t.numpy()) == pytest.approx(t1, rel=1e-5)
    want, _ = ref_curricular(t1)(embeddings.astype(np.float64), kernel.astype(np.float64), labels)
    np.testing.assert_allclose(out["logits"].numpy(), want, rtol=1e-5, atol=1e-4)
    second = embeddings[::-1].copy()
    head(second, labels, training=True)
    t2 = 0.99 * t1 + 0.01 * mean_target_cosine(second, kernel, labels)
    assert float(head.t.numpy()) == pytest.approx(t2, rel=1e-5)


def test_curricularface_t_stays_fixed_while_the_head_is_frozen():
    """Paper 002, Sec. 4.2: "Firstly, we train the FR backbone only using the FR loss function. Then, we train the
    proposed IIA and IRA networks with the FR backbone frozen." A frozen head keeps its curriculum t, as a frozen
    batch norm keeps its statistics. t's update, t <- (1 - momentum) t + momentum mean(cos theta_y): momentum 0.01
    on the batch mean (the CurricularFace authors' code) by default; their paper's "alpha ... set to 0.99" is
    momentum 0.99.

    A FaceTrainer step with freeze [backbone, head] (3D-BERL's auxiliary stage) leaves t at 0.3 and W unchanged;
    the same step unfrozen moves t to 0.99 * 0.3 + 0.01 r, r the numpy mean of cos theta_y of the step's
    embeddings (training-mode backbone) and W. With momentum 0.99 one call gives 0.01 * 0.3 + 0.99 r."""
    from tfface import backbones
    from tfface.training import FaceTrainer

    keras.utils.set_random_seed(3)
    backbone = backbones.get_backbone("tiny", input_shape=(16, 16, 3), embedding_size=D, width=4)
    trainer = FaceTrainer(backbone, get_head("curricularface", C))
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    trainer.build_all((16, 16, 3))
    trainer.head.t.assign(0.3)
    images = np.random.default_rng(2).normal(size=(N, 16, 16, 3)).astype(np.float32)
    labels = np.arange(N, dtype=np.int32) % C
    batch = {"image": images, "label": labels}

    trainer.set_stage(frozen=("backbone", "head"))
    kernel = trainer.head.kernel.numpy().copy()
    trainer.train_on_batch(batch)
    assert float(trainer.head.t.numpy()) == np.float32(0.3)
    np.testing.assert_array_equal(trainer.head.kernel.numpy(), kernel)

    trainer.set_stage()
    embeddings = trainer.backbone(images, training=True)["embedding"].numpy()
    trainer.train_on_batch(batch)
    r = mean_target_cosine(embeddings, kernel, labels)
    assert float(trainer.head.t.numpy()) == pytest.approx(0.99 * 0.3 + 0.01 * r, rel=1e-5)

    head, embeddings, kernel, labels = build_curricularface()
    paper_text = get_head("curricularface", C, momentum=head.PAPER_TEXT_ALPHA)
    paper_text.build((None, D))
    paper_text.kernel.assign(kernel)
    paper_text.t.assign(0.3)
    paper_text(embeddings, labels, training=True)
    r = mean_target_cosine(embeddings, kernel, labels)
    assert float(paper_text.t.numpy()) == pytest.approx(0.01 * 0.3 + 0.99 * r, abs=1e-7)
    assert abs(0.99 * r) > 1e-5  # the batch mean moved t, not only the decay


def test_curricularface_t_uses_the_global_batch_mean_under_mirrored_strategy():
    strategy = mirrored_strategy()
    assert strategy.num_replicas_in_sync == 2
    embeddings, kernel, labels = make_problem()
    with strategy.scope():
        head = get_head("curricularface", C)
        head.build((None, D))
        sphereface = get_head("sphereface", C)
        sphereface.build((None, D))
    head.kernel.assign(kernel)
    sphereface.kernel.assign(kernel)
    # uneven replica batches (4 and 2 examples): the mean of the two replica means would differ from the global mean
    splits = [slice(0, 4), slice(4, N)]

    def replica_batch(context):
        split = splits[context.replica_id_in_sync_group]
        return embeddings[split], labels[split]

    per_replica = strategy.experimental_distribute_values_from_function(replica_batch)

    @tf.function
    def step(inputs):
        def replica_step(x, y):
            return head(x, y, training=True)["logits"], sphereface(x, y, training=True)["logits"]

        return strategy.run(replica_step, args=inputs)

    global_mean = mean_target_cosine(embeddings, kernel, labels)
    replica_means = [mean_target_cosine(embeddings[s], kernel, labels[s]) for s in splits]
    assert abs(global_mean - np.mean(replica_means)) > 1e-2
    logits, _ = step(per_replica)
    t1 = 0.01 * global_mean
    for replica_value in strategy.experimental_local_results(head.t.value):
        assert float(replica_value) == pytest.approx(t1, rel=1e-5)
    want, _ = ref_curricular(t1)(embeddings.astype(np.float64), kernel.astype(np.float64), labels)
    got = np.concatenate([value.numpy() for value in strategy.experimental_local_results(logits)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    step(per_replica)
    assert float(head.t.numpy()) == pytest.approx(0.99 * t1 + 0.01 * global_mean, rel=1e-5)
    assert int(sphereface.iterations.numpy()) == 2


def test_linearface_target_stays_below_cos_and_decreases_linearly():
    head = get_head("linearface", 1, scale=1.0)
    head.build((None, 2))
    head.kernel.assign([[1.0], [0.0]])
    theta = np.linspace(0.0, math.pi, 181)
    embeddings = np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)
    out = head(embeddings, np.zeros(len(theta), np.int32))
    target, plain = out["logits"].numpy()[:, 0], out["plain_logits"].numpy()[:, 0]
    assert np.all(target <= plain - 0.12 + 1e-4)
    np.testing.assert_allclose(target[1:-1], -0.88 * theta[1:-1] + 0.88, atol=1e-5)


# ---------------------------------------------------------------- registry and input errors


def test_registry_lists_heads_and_names_unknown_ones():
    names = ["softmax", "normface", "sphereface", "lsoftmax", "cosface", "arcface", "combined", "curricularface"]
    assert available() == sorted(names + ["linearface", "partial_fc"])
    assert available() == HEADS.available()
    with pytest.raises(ValueError, match="'nope'.*arcface"):
        get_head("nope", C)
    with pytest.raises(ValueError, match="bogus"):
        get_head("arcface", C, bogus=1)
    assert isinstance(get_head("arcface", C), MarginHead)


BAD_OPTIONS = [  # (head, options, the argument the error must name)
    ("arcface", {"scale": 0.0}, "scale"),
    ("arcface", {"margin": -0.1}, "margin"),
    ("arcface", {"margin": 4.0}, "margin"),
    ("softmax", {"num_classes": 0}, "num_classes"),
    ("arcface", {"num_classes": 2.5}, "num_classes"),
    ("normface", {"feature_scale": "yes"}, "feature_scale"),
    ("sphereface", {"margin": 2.5}, "margin"),
    ("lsoftmax", {"margin": 0}, "margin"),
    ("sphereface", {"gamma": -1.0}, "gamma"),
    ("cosface", {"margin": -0.35}, "margin"),
    ("combined", {"m1": 0.0}, "m1"),
    ("curricularface", {"momentum": 1.5}, "momentum"),
    ("curricularface", {"margin": 3.2}, "margin"),
    ("linearface", {"a": -0.88}, "a"),
]


def test_bad_hyper_parameters_name_the_argument():
    for name, options, field in BAD_OPTIONS:
        options = dict(options)
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
