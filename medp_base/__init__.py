"""The torch-free base every other package builds on (DESIGN.md §6): the formats of DESIGN.md §5 and
the geometry of regions on an image. numpy, PIL and pydicom only — the chat app and the data checker
use it without loading torch.

    medp_base.regions     region JSON -> validated prompts (parse_regions, region_from_json, RegionError)
    medp_base.rle         COCO RLE masks
    medp_base.limits      every size limit on untrusted input, in one table
    medp_base.letterbox   original pixels <-> the tower's square input
    medp_base.rasterize   a prompt -> per-patch coverage on the letterboxed grid
    medp_base.image_io    DICOM / NIfTI / PNG / JPEG -> [0, 1] pixels (load_image)
    medp_base.render      regions and boxes drawn on an image
    medp_base.grounding   <ref>..</ref><box>[..]</box> answers -> pixel boxes
    medp_base.tags        <image> / <regionk> placeholders and the rules a prompt follows
    medp_base.data        the training JSONL schema, its validator, the atomic JSONL writer
    medp_base.importers   LLaVA and SLAKE -> MedP JSONL
    medp_base.requests    the OpenAI request that carries an image and its regions
    medp_base.cases       the bundled sample cases (package data: samples/)
    medp_base.network     who may reach a server: loopback, the key
"""
