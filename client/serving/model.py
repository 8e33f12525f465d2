"""The served model as one typed value, and the interface every transport offers.

:class:`ServedModel` is what a Triton server says of ``hepascreen_vnet``, parsed once
(:func:`client.serving.triton.served_model`, from the model config and metadata)
when a transport connects: name and versions, the input tensor, how the model wants
its input made (:class:`client.reading.preprocess.PreprocessSpec`), the classes it
labels, its outputs, the gate's confidence floors and its batch size. Nothing
downstream reads the raw config again; it is kept (``config``) for diagnostics only.

:class:`Transport` is the interface of :class:`client.serving.triton.SegmentationClient`
(one server), :class:`client.serving.supervisor.SupervisedSegmenter` (one server
behind a watchdog) and :class:`client.serving.endpoints.EndpointPool` (several): one
synchronous ``infer(batch) -> {output name: array}``. Requests in flight and
back-pressure are :class:`client.serving.futures.InferenceFutures`' business, over any
transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from client.core import contract

if TYPE_CHECKING:
    import numpy as np

    from client.reading.preprocess import PreprocessSpec


@dataclass(frozen=True)
class ServedModel:
    """The served model as its server declares it (read once per connection).

    Attributes
    ----------
    name : str
    versions : tuple of str
        The versions the server serves (model metadata), e.g. ``("1",)``.
    input_name, input_dtype : str
        The input tensor (:data:`client.core.contract.INPUT_NAME`, ``TYPE_UINT8``).
    input_shape : tuple of int
        ``(channels, z, y, x)`` of one volume (the batch axis excluded).
    preprocess_spec : client.reading.preprocess.PreprocessSpec
        How the model wants its input made (its config's ``parameters``).
    classes : dict
        ``{name: label value}`` of the classes the model labels (liver 1, spleen 2 always).
    output_names : tuple of str
        :data:`client.core.contract.OUTPUT_NAME`, then
        :data:`client.core.contract.CONFIDENCE_NAME` when the model serves its confidence.
    confidence_floor : dict, optional
        The gate's per-organ floors of the mean confidence the config declares.
    max_batch_size : int
    config : dict
        The raw model config (JSON form), for diagnostics; not compared.
    """

    name: str
    versions: tuple[str, ...]
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    preprocess_spec: PreprocessSpec
    classes: dict[str, int]
    output_names: tuple[str, ...]
    confidence_floor: dict[str, float] | None
    max_batch_size: int
    config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """The spatial input size ``(z, y, x)`` of one window."""
        return tuple(self.input_shape[1:])

    @property
    def has_confidence(self) -> bool:
        """Whether the model serves the confidence map (:data:`contract.CONFIDENCE_NAME`)."""
        return contract.CONFIDENCE_NAME in self.output_names

    @property
    def version(self) -> str | None:
        """The served versions as one string (``"1"``, ``"1,2"``), None when unknown."""
        return ",".join(self.versions) or None


@runtime_checkable
class Transport(Protocol):
    """Segmentation by a served model, synchronously: the interface of every transport.

    ``infer`` takes a uint8 batch ``[N, 1, z, y, x]`` and returns every output the model
    serves by name (:data:`client.core.contract.OUTPUT_NAME` uint8 ``[N, z, y, x]``, and
    :data:`client.core.contract.CONFIDENCE_NAME` when ``model.has_confidence``), raising
    :class:`client.core.errors.InferenceError` on failure. It may be called from several
    threads at once; ``max_in_flight`` is how many requests the transport is meant to
    have outstanding (the bound :class:`client.serving.futures.InferenceFutures` uses).
    """

    model: ServedModel
    max_in_flight: int

    @property
    def url(self) -> str:
        """Where it sends requests (``host:port``; a pool: comma-separated)."""
        ...

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def statistics(self) -> dict:
        """This transport's inference statistics (counts; see each class)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc) -> None: ...


__all__ = ["ServedModel", "Transport"]
