"""Triton Python-backend model: ONNX Runtime on the exported VNet (uint8 in, uint8 out).

Plain on purpose (python_backend examples/add_sub): ``initialize`` opens the ONNX
session (on the CPU, or with ONNX Runtime's CUDA provider when the config parameter
``device`` is ``gpu``: ``configs/gpu.pbtxt``, chosen by ``--model-config-name=gpu``), ``execute`` concatenates the batched requests into one ONNX Runtime call
and returns one response per request, a bad request gets a ``TritonError`` in its
own response and the others still run.

Outputs: every output the config lists is served by the ONNX output of the same name
(``LABELS``, and ``CONFIDENCE`` where the config lists it); each response carries the
outputs its request asked for, and ONNX Runtime is asked only for the outputs some
request of the batch wants. A config listing an output the ONNX file lacks refuses
to load (naming the fix); an ONNX output the config does not list is never computed
for a response, so a LABELS-only config serves a file that has both.

The ``hepascreen_*`` parameters (how the client makes the input: ``resize`` or
``spacing``) are the client's business; the model only refuses to load when the ONNX
file's own metadata declares a different preprocessing (a model trained one way and
served the other gives wrong masks without any error).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        self.model_config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in self.model_config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        onnx_file = params.get("onnx_file", "model.onnx")
        path = onnx_file if os.path.isabs(onnx_file) else os.path.join(here, onnx_file)
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_num_threads", "0") or 0)
        if threads > 0:
            opts.intra_op_num_threads = threads
        spin = params.get("intra_op_allow_spinning", "").strip()
        if spin in ("0", "1"):
            opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        device = params.get("device", "cpu").strip().lower()
        try:
            self.session = open_session(
                ort, path, opts, device,
                device_id=int(args.get("model_instance_device_id", 0) or 0),
                gpu_mem_limit_mib=int(params.get("gpu_mem_limit_mib", "0") or 0),
            )  # fmt: skip
        except ProviderError as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        inp = self.model_config["input"][0]
        self.input_name = inp["name"]
        # Config order; each output as the numpy dtype the config declares.
        self.outputs = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"])
            for o in self.model_config["output"]
        }
        missing = _missing_outputs(list(self.outputs), [o.name for o in self.session.get_outputs()])
        if missing:
            raise pb_utils.TritonModelException(f"{path}: {missing}")
        self.item_shape = tuple(int(d) for d in inp["dims"])
        onnx_in = self.session.get_inputs()[0]
        if list(onnx_in.shape[1:]) != list(self.item_shape):
            raise pb_utils.TritonModelException(
                f"{path}: ONNX input {onnx_in.name} has shape {onnx_in.shape}, "
                f"config.pbtxt expects [batch, {', '.join(map(str, self.item_shape))}]"
            )
        self.onnx_input = onnx_in.name
        meta = self.session.get_modelmeta().custom_metadata_map
        mismatch = _preprocess_mismatch(params, meta)
        if mismatch:
            raise pb_utils.TritonModelException(f"{path}: {mismatch}")

    def execute(self, requests):
        arrays, valid, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            x = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            if x.dtype != np.uint8 or tuple(x.shape[1:]) != self.item_shape:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"expected {self.input_name} uint8 [batch, {', '.join(map(str, self.item_shape))}], "
                        f"got {x.dtype} {list(x.shape)}"
                    )
                )
                continue
            arrays.append(x)
            valid.append(i)
        if arrays:
            batch = np.concatenate(arrays, axis=0)
            wants = [self._requested(requests[i]) for i in valid]
            names = [n for n in self.outputs if any(n in w for w in wants)]
            try:
                results = self.session.run(names, {self.onnx_input: batch})
            except Exception as exc:  # one failed run fails its requests, not the server
                for i in valid:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"ONNX Runtime failed: {exc}")
                    )
                return responses
            results = {n: r.astype(self.outputs[n], copy=False) for n, r in zip(names, results)}
            start = 0
            for i, x, want in zip(valid, arrays, wants):
                n = x.shape[0]
                outs = [pb_utils.Tensor(k, results[k][start : start + n]) for k in want]
                responses[i] = pb_utils.InferenceResponse(output_tensors=outs)
                start += n
        return responses

    def _requested(self, request):
        """The config's outputs this request asked for, in config order (all when it
        names none; Triton itself turns 'none named' into 'all')."""
        asked = getattr(request, "requested_output_names", None)
        asked = set(asked()) if asked is not None else set()
        return [n for n in self.outputs if n in asked] or list(self.outputs)

    def finalize(self):
        self.session = None


class ProviderError(RuntimeError):
    """The ONNX Runtime session cannot run where the config asks (device parameter)."""


GPU_FIX = (
    "replace onnxruntime by onnxruntime-gpu in the server's Python (pip uninstall "
    "onnxruntime && pip install onnxruntime-gpu: never both, they share the module name), "
    "with the CUDA 12 / cuDNN 9 libraries it needs on the library path, or use --device cpu"
)


def open_session(ort, path, opts, device, device_id=0, gpu_mem_limit_mib=0):
    """The ONNX Runtime session for ``device`` ("cpu" or "gpu"), checked AFTER creation.

    ONNX Runtime lists ``CUDAExecutionProvider`` as available and then silently runs on
    the CPU when cuDNN or cuBLAS fail to load (onnxruntime#23372, #17801): only the
    created session's ``get_providers()`` says where it really runs, so a GPU session
    whose first provider is not CUDA is refused with the fix. ``gpu_mem_limit_mib`` (> 0)
    caps ONNX Runtime's CUDA arena, which otherwise grows to whatever the largest batch
    needed and keeps it, beside Triton and the client's CuPy measurement on one card.

    Raises
    ------
    ProviderError
        Unknown device, or a GPU session that did not get the CUDA provider.
    """
    if device == "cpu":
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    if device != "gpu":
        raise ProviderError(f"config parameter device: expected cpu or gpu, got {device!r}")
    available = list(ort.get_available_providers())
    if "CUDAExecutionProvider" not in available:
        raise ProviderError(
            f"device gpu: this ONNX Runtime ({getattr(ort, '__version__', '?')}) has no "
            f"CUDAExecutionProvider (available: {', '.join(available)}); {GPU_FIX}"
        )
    cuda = {"device_id": int(device_id)}
    if gpu_mem_limit_mib > 0:
        cuda["gpu_mem_limit"] = int(gpu_mem_limit_mib) * 1024 * 1024
        cuda["arena_extend_strategy"] = "kSameAsRequested"
    providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    session = ort.InferenceSession(path, sess_options=opts, providers=providers)
    got = list(session.get_providers())
    if not got or got[0] != "CUDAExecutionProvider":
        raise ProviderError(
            f"device gpu: ONNX Runtime {getattr(ort, '__version__', '?')} listed "
            f"CUDAExecutionProvider but the session runs on {', '.join(got) or 'nothing'} "
            f"(GPU {device_id}): the CUDA provider failed to load, usually cuDNN or cuBLAS "
            "missing or of the wrong major version (see the server log for the library "
            f"name); {GPU_FIX}"
        )
    return session


# Keys of client/core/contract.py (PREPROCESS_PARAM, PREPROCESS_SPACING_PARAM); the stub's
# Python may not see the client package, so they are repeated here (a test compares).
PREPROCESS_PARAM = "hepascreen_preprocess"
PREPROCESS_SPACING_PARAM = "hepascreen_spacing_mm"


# client/core/contract.py CONFIDENCE_NAME (repeated for the same reason as the keys above).
CONFIDENCE_NAME = "CONFIDENCE"


def _missing_outputs(config_outputs, onnx_outputs):
    """A message when config.pbtxt lists an output the ONNX file does not have."""
    missing = [n for n in config_outputs if n not in onnx_outputs]
    if not missing:
        return None
    msg = (
        f"config.pbtxt lists output {', '.join(missing)}, the ONNX file has "
        f"{', '.join(onnx_outputs)}"
    )
    if CONFIDENCE_NAME in missing:
        msg += (
            f": add {CONFIDENCE_NAME} to the file with `python -m training.export "
            "--add-confidence-only model.onnx` (new exports have it), or remove that "
            "output from config.pbtxt"
        )
    return msg


def _declared(values):
    """(mode, spacing or None) from a {key: str} mapping; absent mode is resize."""
    mode = (values.get(PREPROCESS_PARAM) or "resize").strip()
    spacing = None
    if mode == "spacing":
        try:
            spacing = tuple(float(v) for v in values.get(PREPROCESS_SPACING_PARAM, "").split(","))
        except ValueError:
            spacing = values.get(PREPROCESS_SPACING_PARAM)
    return mode, spacing


def _preprocess_mismatch(params, meta):
    """A message when the ONNX metadata declares another preprocessing than the config."""
    if PREPROCESS_PARAM not in meta:
        return None  # an export that does not say: the config is the only declaration
    config, onnx = _declared(params), _declared(meta)
    if config == onnx:
        return None
    fmt = lambda d: d[0] + ("" if d[1] is None else f" at {d[1]} mm")  # noqa: E731
    return (
        f"the ONNX metadata declares preprocessing {fmt(onnx)}, config.pbtxt {fmt(config)}: "
        f"set the config's {PREPROCESS_PARAM} / {PREPROCESS_SPACING_PARAM} parameters to what "
        "the model was trained with"
    )
