"""3D-BERL's self-supervised 3D reconstruction bypass (paper 002, Sec. 3), registered as branch "bypass3d".

From one batch it reconstructs every input face through the image formation model and returns the per-example L1
error (Eq. 6), which the trainer weighs by the entry's `weight` (gamma_2 of Eq. 7; the identity loss keeps weight 1):

    IIA (image, no backbone):  Phi_w(I) -> view (3 rotations, 3 translations); Phi_l(I) -> light (k_a, k_d, l_dx, l_dy)
    IRA (backbone stage 3):    Phi_d(f_s3) -> canonical depth d; Phi_a(f_s3) -> canonical albedo a
    render (tfface.rendering): n = normals(d); I_c = a (k_a + k_d max(0, <l_d, n>))        (Eq. 1)
                               I_hat = warp of I_c to the view, p' ~ K (d R K^-1 p + t)    (Eq. 2-4)
    loss:                      L_recon = mean |I_hat - I| over the 64x64 resized input     (Eq. 6)
    symmetry (option, not in 3D-BERL; Unsup3D's): + lambda_flip mean |I_hat_flip - I|, I_hat_flip rendered as above
                               from the horizontally flipped d and a with the same light and view

Gradient routing: IRA reads the stage-3 features, so L_recon reaches the aux nets and the backbone up to stage 3 only
(never stage 4 or the embedding layer); IIA reads the image. The four nets are the branch's cooperative variables,
trained by its own optimizer (Adam in the paper) when the config gives one. They are not part of the backbone, so an
export of the backbone carries none of them.

Units and ranges (Unsup3D's): pixels in [0, 1]; depth in metres within [min_depth, max_depth] about 1 m (per-image
mean removed before the tanh, so the nets set relief, not distance; border columns behind the face, `clamp_border`);
camera with a `fov_degrees` field of view; rotations about (0, 0, 1 m) up to `max_rotation_degrees`; translations up
to `max_translation` metres; k_a, k_d in [0, 1]; l_dx, l_dy in [-1, 1] (light (l_dx, l_dy, 1) normalised; see
tfface.rendering.shading for its sign).
The output layers of Phi_w and Phi_d start at zero: training starts from the canonical view and a flat depth at 1 m
(random depth ripples would shade as noise). Phi_l's starts random: with a flat depth and light from the camera
too, shading's gradients with respect to the light and the depth slopes would both vanish.
"""
import math
from typing import Dict, Optional, Sequence

import tensorflow as tf
from keras import ops

from tfface import rendering
from tfface.branches.image_nets import parameter_encoder
from tfface.branches.reconstruction_nets import canonical_map_net
from tfface.training.plugins import Branch, StepContext

ROTATION_CENTER_DEPTH = 1.0  # the canonical face sits 1 m in front of the camera and turns about that point
VIEW_OUTPUTS = 6  # pitch, yaw, roll, t_x, t_y, t_z
LIGHT_OUTPUTS = 4  # k_a, k_d, l_dx, l_dy


def to_unit_pixels(images):
    """Normalised images (pixel - 127.5) / 128 -> pixel / 255 in [0, 1] (same shape)."""
    return (ops.cast(images, "float32") * 128.0 + 127.5) / 255.0


def decode_view(raw, max_rotation_degrees: float, max_translation: Sequence[float]):
    """raw [N, 6] in (-1, 1) -> (angles [N, 3] radians (pitch, yaw, roll), translation [N, 3] metres)."""
    raw = ops.cast(raw, "float32")
    angles = raw[:, :3] * (max_rotation_degrees * math.pi / 180.0)
    translation = raw[:, 3:] * ops.convert_to_tensor(list(max_translation), "float32")
    return angles, translation


def decode_light(raw) -> Dict[str, tf.Tensor]:
    """raw [N, 4] in (-1, 1) -> {"ambient" k_a, "diffuse" k_d in (0, 1), "l_dx", "l_dy" in (-1, 1)}, each [N]."""
    raw = ops.cast(raw, "float32")
    return {
        "ambient": (raw[:, 0] + 1.0) / 2.0, "diffuse": (raw[:, 1] + 1.0) / 2.0, "l_dx": raw[:, 2], "l_dy": raw[:, 3],
    }


def decode_depth(raw, min_depth: float, max_depth: float):
    """raw [N, H, W] -> depth [N, H, W] metres: tanh of raw minus its per-image mean, scaled to (min, max)."""
    raw = ops.cast(raw, "float32")
    centred = ops.tanh(raw - ops.mean(raw, axis=(1, 2), keepdims=True))
    return (max_depth + min_depth) / 2.0 + centred * (max_depth - min_depth) / 2.0


def clamp_border(depth, border_depth: float, columns: int = 2):
    """Unsup3D's border clamp: depth [N, H, W] with its `columns` leftmost and rightmost columns set to border_depth.

    Unsup3D puts the border behind the face (0.7 max + 0.3 min depth): with the per-image mean removed, a face in
    the middle then stands out toward the camera, which picks the convex of the two shapes that shade alike.
    """
    if columns == 0:
        return depth
    width = depth.shape[2]
    inside = ops.concatenate([ops.zeros((columns,)), ops.ones((width - 2 * columns,)), ops.zeros((columns,))], axis=0)
    return depth * inside + border_depth * (1.0 - inside)


def decode_albedo(raw):
    """raw [N, H, W, 3] in (-1, 1) (tanh) -> albedo in (0, 1)."""
    return (ops.cast(raw, "float32") + 1.0) / 2.0


def render(depth, albedo, light: Dict[str, tf.Tensor], angles, translation, K, march_steps: int = 16,
           refine_steps: int = 6):
    """The image formation of Eq. 1-4 -> {"normals" [N, H, W, 3], "canonical" I_c [N, H, W, 3], "image" I_hat
    [N, H, W, 3], "valid" [N, H, W] 0/1}.

    depth [N, H, W] metres; albedo [N, H, W, 3]; light as `decode_light`; angles [N, 3] rad; translation [N, 3] m;
    march_steps, refine_steps: of the warp's ray casting (`tfface.rendering.source_coordinates`).
    """
    normals = rendering.normals_from_depth(depth, K)
    direction = rendering.light_direction(light["l_dx"], light["l_dy"])
    canonical = rendering.lambertian(albedo, normals, light["ambient"], light["diffuse"], direction)
    image, valid = rendering.warp_to_view(canonical, depth, angles, translation, K, ROTATION_CENTER_DEPTH,
                                          march_steps=march_steps, refine_steps=refine_steps)
    return {"normals": normals, "canonical": canonical, "image": image, "valid": valid}


def reconstruction_l1(image, target):
    """Eq. 6 per example: mean |image - target| over pixels and channels, [N, H, W, C] each -> [N].

    Every pixel counts, also those where the warp found no surface (they show the sample at the unresolved source):
    a mean over the valid pixels only would let the view net shrink them to nothing and the loss with them.
    """
    return ops.mean(ops.abs(image - target), axis=(1, 2, 3))


class Bypass3D(Branch):
    """The 3D reconstruction bypass. Options (config `branches: [{name: bypass3d, options: {...}}]`):

    feature: backbone output the IRA reads (the paper: "stage3"); map_size: side of the canonical maps and of the
    reconstruction (64); fov_degrees: camera field of view (10); min_depth, max_depth: depth range in metres
    (0.9, 1.1); max_rotation_degrees (60) and max_translation (x, y, z metres; 0.1 each): ranges of Phi_w;
    ira_width, code_size: Unsup3D's nf (64) and code size (256) of Phi_d, Phi_a; iia_width: nf of Phi_w, Phi_l (32);
    depth_size: side of the depth Phi_d decodes, resized (bicubic) to map_size (default: map_size, the paper's);
    border_columns: left and right depth columns clamped behind the face, as Unsup3D does (2; 0: none);
    march_steps, refine_steps: ray-marching and root-refining steps of the warp (16, 6);
    symmetry_weight: lambda_flip of Unsup3D's symmetry prior, the weight of the L1 of the reconstruction rendered
    from the flipped depth and albedo (0: none, the paper's 3D-BERL; Unsup3D: 0.5).
    """

    def __init__(
        self,
        feature: str = "stage3",
        map_size: int = 64,
        fov_degrees: float = 10.0,
        min_depth: float = 0.9,
        max_depth: float = 1.1,
        max_rotation_degrees: float = 60.0,
        max_translation: Sequence[float] = (0.1, 0.1, 0.1),
        ira_width: int = 64,
        code_size: int = 256,
        iia_width: int = 32,
        march_steps: int = 16,
        refine_steps: int = 6,
        depth_size: Optional[int] = None,
        border_columns: int = 2,
        symmetry_weight: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 < min_depth < max_depth:
            raise ValueError(f"bypass3d: need 0 < min_depth < max_depth, got {min_depth} and {max_depth}")
        if len(max_translation) != 3:
            raise ValueError(f"bypass3d: max_translation must be 3 numbers (x, y, z metres), got {max_translation}")
        if max_rotation_degrees < 0 or min(max_translation) < 0:
            raise ValueError("bypass3d: max_rotation_degrees and max_translation must be >= 0")
        self.feature = feature
        self.map_size = int(map_size)
        self.fov_degrees = float(fov_degrees)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.max_rotation_degrees = float(max_rotation_degrees)
        self.max_translation = tuple(float(value) for value in max_translation)
        self.ira_width, self.code_size, self.iia_width = int(ira_width), int(code_size), int(iia_width)
        self.march_steps, self.refine_steps = int(march_steps), int(refine_steps)
        self.depth_size = self.map_size if depth_size is None else int(depth_size)
        self.border_columns = int(border_columns)
        self.symmetry_weight = float(symmetry_weight)
        if self.symmetry_weight < 0:
            raise ValueError(f"bypass3d: symmetry_weight must be >= 0, got {symmetry_weight}")
        if not 0 <= 2 * self.border_columns < self.map_size:
            raise ValueError(f"bypass3d: border_columns must be in [0, map_size / 2), got {border_columns}")
        for key, value in (("map_size", self.map_size), ("depth_size", self.depth_size)):
            if value < 8 or value & (value - 1):
                raise ValueError(f"bypass3d: {key} must be a power of two >= 8, got {value}")
        if self.depth_size > self.map_size:
            raise ValueError(f"bypass3d: depth_size {self.depth_size} must not exceed map_size {self.map_size}")
        self.intrinsics = rendering.intrinsics_from_fov(self.fov_degrees, self.map_size, self.map_size)

    def build_for(self, features_spec: Dict[str, tuple], head) -> None:
        if self.feature not in features_spec:
            raise ValueError(f"bypass3d: feature '{self.feature}' is not a backbone output; "
                             f"outputs: {', '.join(sorted(features_spec))}")
        feature_shape = features_spec[self.feature]
        if len(feature_shape) != 3:
            raise ValueError(f"bypass3d: feature '{self.feature}' must be a feature map [h, w, c], got {feature_shape}")
        size, width = self.map_size, self.iia_width
        self.view_net = parameter_encoder(VIEW_OUTPUTS, size, width, name=f"{self.name}_phi_w")
        self.light_net = parameter_encoder(LIGHT_OUTPUTS, size, width, head_initializer="glorot_uniform",
                                           name=f"{self.name}_phi_l")
        map_options = {"width": self.ira_width, "code_size": self.code_size}
        self.depth_net = canonical_map_net(feature_shape, 1, map_size=self.depth_size, output_initializer="zeros",
                                           name=f"{self.name}_phi_d", **map_options)
        self.albedo_net = canonical_map_net(feature_shape, 3, map_size=size, output_activation="tanh",
                                            name=f"{self.name}_phi_a", **map_options)
        self.built = True

    def cooperative_variables(self):
        return [variable for net in self._nets() for variable in net.trainable_variables]

    def _nets(self):
        return [self.view_net, self.light_net, self.depth_net, self.albedo_net]

    def resize(self, images):
        """Normalised images [N, H, W, 3] -> [N, m, m, 3] at m = map_size (what IIA reads and L_recon compares)."""
        return tf.image.resize(ops.cast(images, "float32"), (self.map_size, self.map_size), antialias=True)

    def nuisances(self, resized) -> Dict[str, tf.Tensor]:
        """IIA on resized images [N, m, m, 3] -> {"angles", "translation" [N, 3]; "ambient", "diffuse", "l_dx",
        "l_dy" [N]} (ranges in the module docstring)."""
        angles, translation = decode_view(self.view_net(resized), self.max_rotation_degrees, self.max_translation)
        return {"angles": angles, "translation": translation, **decode_light(self.light_net(resized))}

    def reconstruct(self, images, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """images [N, H, W, 3] normalised, features the backbone's outputs -> every factor and the reconstruction:

        "target" [N, m, m, 3] (the input resized to m = map_size, in [0, 1]); "depth" [N, m, m] metres; "albedo"
        [N, m, m, 3]; the `nuisances`; "normals", "canonical" (I_c), "image" (I_hat) and "valid" as `render`;
        "l1" [N] (Eq. 6 per example); with symmetry_weight > 0 also "flipped_image" [N, m, m, 3] (I_hat rendered
        from the horizontally flipped depth and albedo, same light and view) and "flipped_l1" [N].
        """
        resized = self.resize(images)
        nuisances = self.nuisances(resized)
        light = {key: nuisances[key] for key in ("ambient", "diffuse", "l_dx", "l_dy")}
        angles, translation = nuisances["angles"], nuisances["translation"]
        feature_map = features[self.feature]
        depth = decode_depth(self.depth_net(feature_map)[..., 0], self.min_depth, self.max_depth)
        if self.depth_size != self.map_size:
            size = (self.map_size, self.map_size)
            depth = tf.image.resize(depth[..., None], size, method="bicubic")[..., 0]
        depth = clamp_border(depth, 0.7 * self.max_depth + 0.3 * self.min_depth, self.border_columns)
        albedo = decode_albedo(self.albedo_net(feature_map))
        rendered = render(depth, albedo, light, angles, translation, self.intrinsics, self.march_steps,
                          self.refine_steps)
        target = to_unit_pixels(resized)
        result = {
            "target": target, "depth": depth, "albedo": albedo, **nuisances, **rendered,
            "l1": reconstruction_l1(rendered["image"], target),
        }
        if self.symmetry_weight > 0:
            flipped = render(ops.flip(depth, axis=2), ops.flip(albedo, axis=2), light, angles, translation,
                             self.intrinsics, self.march_steps, self.refine_steps)
            result["flipped_image"] = flipped["image"]
            result["flipped_l1"] = reconstruction_l1(flipped["image"], target)
        return result

    def loss(self, context: StepContext):
        """L_recon per example [N] (Eq. 6), plus symmetry_weight times the flipped reconstruction's L1."""
        result = self.reconstruct(context.batch["image"], context.features)
        if self.symmetry_weight > 0:
            return result["l1"] + self.symmetry_weight * result["flipped_l1"]
        return result["l1"]
