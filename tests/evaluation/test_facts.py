"""Invented facts: locations and sizes the image cannot support, in answers and in references."""

from evaluation.facts import invented_facts, unsupported

BRAIN = {"locations": "brain lobes", "spacing_known": True}
CHEST = {"locations": "lung zones", "spacing_known": True}
LEG = {"locations": None, "spacing_known": False}  # a radiograph without pixel spacing


def test_locations_belong_to_their_anatomy_and_sizes_to_a_known_spacing():
    brain = "Abscess, 17 mm, round, in the right frontal lobe."
    assert unsupported(brain, BRAIN) == []
    assert unsupported(brain, CHEST) == ["location"]
    assert unsupported(brain, LEG) == ["location", "size"]
    assert unsupported("Calcification, in the left lower zone.", CHEST) == []
    assert unsupported("Calcification, in the left lower zone.", BRAIN) == ["location"]
    assert unsupported("In the cerebellar hemisphere.", LEG) == ["location"]
    for size in ("About 7.7 mm across.", "2.5 cm", "358 µm", "an area of 40 mm²"):
        assert unsupported(size, LEG) == ["size"] and unsupported(size, BRAIN) == []
    assert unsupported("Mass, round, well-defined; 2 of them.", LEG) == []  # counts are not sizes
    assert unsupported("Left of the midline, upper part of the image.", LEG) == []  # plain directions are fine


def test_shares_per_task_for_answers_and_references():
    rows = [{"task": "description", "meta": LEG, "prediction": "Cyst, 9 mm, in the left parietal lobe.",
             "reference": "Cyst, 9 mm, oval."},
            {"task": "description", "meta": BRAIN, "prediction": "Cyst, in the left parietal lobe.",
             "reference": "Cyst, 9 mm, in the left parietal lobe."},
            {"task": "counting", "meta": LEG, "prediction": "", "reference": "1."},
            {"task": "counting", "meta": {}, "prediction": "3 mm", "reference": "1."}]  # not checkable
    facts = invented_facts(rows)
    assert facts["all"]["n"] == 3 and facts["description"]["n"] == 2 and facts["counting"]["n"] == 1
    assert facts["description"]["prediction"] == {"location": 0.5, "size": 0.5, "any": 0.5}
    assert facts["description"]["reference"] == {"location": 0.0, "size": 0.5, "any": 0.5}
    assert facts["counting"]["prediction"]["any"] == 0.0
