"""Request and response bodies (pydantic). Field docs show up in /docs.

Every request body derives from `RequestModel` (service/validation.py): invalid Unicode anywhere in
it is a 400 naming the field, before any field is validated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.collections.base import IndexKind
from service.validation import RequestModel

Modality = Literal["text", "image"]


class Item(BaseModel):
    """An explicit input: `{"image": "<base64 | data URI | URL>"}`, `{"text": "..."}`, or both
    (image+text pairs, for pair heads)."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(None, description="base64, a data:image/...;base64 URI, or an http(s) URL")
    text: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Item:
        if self.image is None and self.text is None:
            raise ValueError("an input object needs 'image' or 'text'")
        return self


InputValue = str | Item | int | list[int]


# --- embeddings -----------------------------------------------------------------------------------
class EmbeddingRequest(RequestModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[InputValue] = Field(
        ...,
        description="A string or a list of strings / {'image': ...} / {'text': ...} items. "
        "Strings starting with 'data:image/' are images; others are texts unless modality='image'.",
    )
    model: str | None = Field(None, description="The served model: 'momo', its name, or name:version.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Must equal the model's embedding size if given.")
    user: str | None = None
    modality: Modality | None = Field(None, description="Force every string input to be a text or an image.")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(..., description="Text tokens (after truncation) + image patches + CLS.")
    total_tokens: int
    truncated_inputs: int = Field(0, description="Texts cut to the model's token limit.")


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


# --- classification -------------------------------------------------------------------------------
class ClassifyRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    input: str | Item | list[str | Item] = Field(..., description="One input or a list.")
    modality: Modality | None = None
    labels: list[str] | None = Field(None, description="Zero-shot: the candidate labels.")
    template: str | None = Field(
        None, description="Zero-shot prompt with '{label}'; server default if unset."
    )
    head: str | None = Field(None, description="A fine-tuned head of the model instead of zero-shot labels.")
    top_k: int | None = Field(None, ge=1, description="Return only the best k labels.")
    model: str | None = None


class LabelScore(BaseModel):
    label: str
    score: float = Field(..., description="Probability (the list sums to 1 over all labels).")


class Classification(BaseModel):
    index: int
    labels: list[LabelScore]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    method: Literal["zero-shot", "head"]
    head: str | None = None
    template: str | None = None
    data: list[Classification]
    usage: Usage


# --- VQA ------------------------------------------------------------------------------------------
class VQARequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(..., description="base64, a data:image URI, or an http(s) URL (when enabled).")
    question: str
    top_k: int = Field(5, ge=1)
    model: str | None = None


class Answer(BaseModel):
    answer: str
    score: float


class VQAResponse(BaseModel):
    object: Literal["vqa.answers"] = "vqa.answers"
    model: str
    answers: list[Answer]
    usage: Usage


# --- collections ----------------------------------------------------------------------------------
class CollectionCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="1-64 of letters, digits, '.', '_', '-'.")
    description: str | None = Field(None, max_length=2000)
    metadata: dict[str, Any] | None = None
    index: IndexKind = Field(
        "auto",
        description="auto: exact search, HNSW once a modality has ann_threshold items; "
        "flat: always exact; hnsw: approximate from the start.",
    )


class CollectionInfo(BaseModel):
    object: Literal["collection"] = "collection"
    name: str
    dim: int
    model: str = Field(..., description="The model version (name:version) the vectors came from.")
    index: IndexKind
    count: int
    counts: dict[str, int]
    created_at: str | None = None
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    searchable: bool = Field(..., description="False when another model version is being served (409).")


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionInfo]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class CollectionItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, max_length=256, description="Your id; adding it again replaces it.")
    text: str | None = None
    image: str | None = None
    metadata: dict[str, Any] | None = None
    thumbnail: bool = Field(
        False, description="Keep a small thumbnail of the image (longest side 128 px, WebP) with the item."
    )

    @model_validator(mode="after")
    def _one_of(self) -> CollectionItemIn:
        if (self.text is None) == (self.image is None):
            raise ValueError("an item needs exactly one of 'text' or 'image'")
        return self


class ItemsAdd(RequestModel):
    model_config = ConfigDict(extra="forbid")
    items: list[CollectionItemIn]


class ItemsAdded(BaseModel):
    object: Literal["collection.items"] = "collection.items"
    collection: str
    added: int
    updated: int
    ids: list[str]
    usage: Usage


class ItemsDelete(RequestModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str]


class ItemsDeleted(BaseModel):
    object: Literal["collection.items.deleted"] = "collection.items.deleted"
    collection: str
    deleted: list[str]
    missing: list[str]


class ItemOut(BaseModel):
    object: Literal["collection.item"] = "collection.item"
    id: str
    modality: Modality
    metadata: dict[str, Any]
    text: str | None = None
    thumbnail: str | None = Field(None, description="data:image/webp;base64,... when kept, else null.")


class SearchFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: Modality | None = Field(None, description="Only items of this modality.")
    metadata: dict[str, Any] | None = Field(None, description="Only items whose metadata has these values.")


class SearchRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    query: str | Item = Field(..., description="A text, a data:image URI, or {'image': ...} / {'text': ...}.")
    top_k: int = Field(10, ge=1)
    filter: SearchFilter | None = None


class SearchHit(BaseModel):
    id: str
    score: float = Field(..., description="Cosine similarity.")
    modality: Modality
    metadata: dict[str, Any]
    text: str | None = None
    thumbnail: str | None = Field(None, description="data:image/webp;base64,... when kept, else null.")


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    collection: str
    model: str
    data: list[SearchHit]
    usage: Usage


# --- models ---------------------------------------------------------------------------------------
class HeadInfo(BaseModel):
    input: str
    task: str
    num_labels: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "momo"
    name: str
    version: str
    active: bool = Field(..., description="The store's active version.")
    serving: bool = Field(..., description="Loaded and serving in this process.")
    runtime: str | None = None
    runtime_selection: dict[str, Any] | None = Field(
        default=None, description="With runtime=auto: the candidates timed at warm-up and the choice."
    )
    device: str | None = None
    embedding_dim: int | None = None
    heads: dict[str, HeadInfo] = Field(default_factory=dict)
    parent: str | None = None


class ModelDetail(ModelCard):
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="The manifest's figures: evaluation (`eval`), fine-tuning (`finetune`), pretraining.",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Activation(BaseModel):
    object: Literal["model.activation"] = "model.activation"
    model: ModelCard
    previous: str | None
    changed: bool


# --- ops ------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    model: str | None = None
    runtime: str | None = None
    device: str | None = None
    pid: int | None = None  # the API process that answered (one of `workers`)
    reason: str | None = None
