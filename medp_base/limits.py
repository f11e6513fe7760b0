"""Every size limit on untrusted input, in one table (DESIGN.md §5; docs/security.md).

Each limit is checked against a *declared* size — an image header, an RLE's ``size``, a vertex
count, a request's ``Content-Length`` — before anything of that size is decoded or allocated. Every
entry point (the server, the CLI, the UI, the data loader) reads its limits from here; nothing else
in the project spells these numbers. numpy-only: the UI and the data checker import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PIXELS = 50_000_000
"""Pixels of one 2-D image (about 7000 x 7000): headers of PNG/JPEG/DICOM, vLLM's image loader, masks."""

MAX_VOXELS = 200_000_000
"""Voxels of one volume (a 512 x 512 x 760 CT), and pixels x frames of a multi-frame DICOM."""

MAX_VOLUME_BYTES = 1 << 30
"""Bytes of one volume once decompressed (a gzipped NIfTI is inflated at most this far)."""

MAX_REQUEST_BYTES = 64 << 20
"""Bytes of one HTTP request body (a 50-megapixel PNG in base64 fits)."""

MAX_UPLOAD_MB = 512
"""Megabytes of one file uploaded to the chat app (a CT series as NIfTI)."""

MAX_REGIONS = 16
"""Region prompts per image (the tower's ``max_regions`` default)."""

MENTIONS_PER_REGION = 4
"""``<regionk>`` mentions allowed per region the tower takes: the server's default limit of region
items per request is ``MENTIONS_PER_REGION * max_regions`` (``medp serve --max-regions``)."""

MAX_VERTICES = 2000
"""Vertices of one polygon or scribble, points of one click set."""

RLE_CHARS_PER_PIXEL = 8
"""An RLE ``counts`` of an (h, w) mask holds at most ``h * w + 1`` runs, each at most this many
characters of the COCO string: longer ``counts`` are refused before decoding."""

MAX_CONTEXT_TOKENS = 4096
"""Tokens of one conversation the server takes by default (prompt + answer; ``medp serve
--max-model-len`` changes it): vLLM refuses a longer prompt with 400 before it is processed."""

MAX_CONCURRENT_REQUESTS = 256
"""HTTP requests in flight in one API server process; more get 503 at once."""


@dataclass(frozen=True)
class Limit:
    name: str
    value: int
    what: str
    enforced: str


LIMITS: tuple[Limit, ...] = (
    Limit("MAX_REQUEST_BYTES", MAX_REQUEST_BYTES, "bytes of one HTTP request body",
          "server: RequestGuard, from Content-Length or while reading, before parsing (413)"),
    Limit("MAX_CONCURRENT_REQUESTS", MAX_CONCURRENT_REQUESTS, "requests in flight per API server process",
          "server: RequestGuard (503)"),
    Limit("MAX_CONTEXT_TOKENS", MAX_CONTEXT_TOKENS, "tokens of a conversation (default of --max-model-len; at most "
          "the LLM's own)", "server: vLLM, on the token count before the multimodal processor runs"),
    Limit("MAX_PIXELS", MAX_PIXELS, "pixels of one 2-D image or mask",
          "image headers before decoding: server (VLLM_MAX_IMAGE_PIXELS + MedP media connector), "
          "load_image (CLI, UI), data check; RLE/PNG mask sizes (decode_rle refuses a larger RLE from any "
          "source: a server's masks in the chat app)"),
    Limit("MAX_VOXELS", MAX_VOXELS, "voxels of a volume, pixels x frames of a multi-frame DICOM",
          "load_image (NIfTI header, DICOM Rows x Columns x NumberOfFrames) before decoding"),
    Limit("MAX_VOLUME_BYTES", MAX_VOLUME_BYTES, "bytes of a gzipped volume once inflated",
          "load_image: bounded inflation of .nii.gz uploads"),
    Limit("MAX_UPLOAD_MB", MAX_UPLOAD_MB, "megabytes of one upload to the chat app",
          "Streamlit server.maxUploadSize (medp ui)"),
    Limit("MAX_REGIONS", MAX_REGIONS, "regions per image (default; the tower's max_regions)",
          "parse_regions, before any region is parsed"),
    Limit("MENTIONS_PER_REGION", MENTIONS_PER_REGION, "x max_regions = <regionk> mentions per request",
          "server: the processor counts mentions in the token ids before any region is encoded"),
    Limit("MAX_VERTICES", MAX_VERTICES, "vertices of a polygon / scribble, points of a click set",
          "parse_regions, from the list length before converting"),
    Limit("RLE_CHARS_PER_PIXEL", RLE_CHARS_PER_PIXEL, "x (h * w + 1) = length of an RLE 'counts' string "
          "(list: h * w + 1 runs)",
          "decode_rle, after the declared size matched the image and before decoding"),
)


def limits_table() -> str:
    """The limits as a Markdown table (docs/security.md shows it; a test keeps the two equal)."""
    rows = ["| limit | value | what | enforced where |", "|---|---|---|---|"]
    rows += [f"| `{limit.name}` | {limit.value:,} | {limit.what} | {limit.enforced} |" for limit in LIMITS]
    return "\n".join(rows)
