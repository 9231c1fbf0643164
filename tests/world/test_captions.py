import numpy as np

from unoflux.world import caption_scene, caption_two_panel, make_identity
from unoflux.world.captions import BACKGROUND_WORDS, PLACEMENT_WORDS, SIZE_WORDS
from unoflux.world.sampling import distinct_looks, sample_scene, sample_two_panel


def test_captions_are_deterministic_and_varied():
    spec = sample_scene(np.random.default_rng(0), [make_identity(5, "star", "red", "striped")])
    assert caption_scene(spec, 3) == caption_scene(spec, 3)
    variants = {caption_scene(spec, seed) for seed in range(40)}
    assert len(variants) >= 15


def test_single_caption_names_everything_checked():
    rng = np.random.default_rng(1)
    for seed in range(30):
        spec = sample_scene(rng, [make_identity(seed)])
        text = caption_scene(spec, seed).lower()
        s = spec.subjects[0]
        assert s.identity.colour in text
        assert any(w in text for w in SIZE_WORDS[s.size])
        assert any(w in text for w in PLACEMENT_WORDS[s.placement])
        assert any(w.lower() in text for w in BACKGROUND_WORDS[spec.background])


def test_multi_caption_states_the_relation():
    rng = np.random.default_rng(2)
    spec = sample_scene(rng, distinct_looks(rng, 2))
    a, b = (s.identity for s in spec.subjects)
    text = caption_scene(spec, 0)
    assert (
        f"{a.colour} {a.shape} is left of the {b.colour} {b.shape}" in text
        or f"{b.colour} {b.shape} is right of the {a.colour} {a.shape}" in text
    )


def test_two_panel_caption_in_context_style():
    spec = sample_two_panel(np.random.default_rng(3), make_identity(8, "heart", "blue", "dotted"))
    text = caption_two_panel(spec, 0)
    assert "same" in text and "blue" in text and "heart" in text
    assert ("on the left," in text and "on the right," in text) or ("left panel" in text and "right panel" in text)


def test_captions_without_looks_keep_size_place_and_background_only():
    from unoflux.world.captions import PATTERN_WORDS, SHAPE_WORDS
    from unoflux.world.vocab import COLOURS

    rng = np.random.default_rng(4)
    look_words = set(COLOURS) | {w for ws in (*SHAPE_WORDS.values(), *PATTERN_WORDS.values()) for w in ws if w}
    for seed in range(30):
        spec = sample_scene(rng, distinct_looks(rng, 1 + seed % 3))
        text = caption_scene(spec, seed, name_looks=False).lower()
        assert not look_words & set(text.replace(",", " ").replace(".", " ").replace(":", " ").split()), text
        for s in spec.subjects:
            assert any(w in text for w in SIZE_WORDS[s.size]) and any(w in text for w in PLACEMENT_WORDS[s.placement])
        assert any(w.lower() in text for w in BACKGROUND_WORDS[spec.background])


def test_placeholders_follow_each_subjects_name_and_change_nothing_else():
    """DreamO's [ref#k] right after subject k's name (left to right, the references' order), with and without
    looks; taking them out gives the plain caption (the same wording draws)."""
    from unoflux.world.captions import GENERIC_NOUNS, SHAPE_WORDS

    rng = np.random.default_rng(22)
    for seed in range(12):
        spec = sample_scene(rng, distinct_looks(rng, 1 + seed % 3))
        for name_looks in (True, False):
            text = caption_scene(spec, seed, name_looks, placeholders=True)
            plain = text
            for k in range(len(spec.subjects)):
                plain = plain.replace(f" [ref#{k + 1}]", "")
            assert plain == caption_scene(spec, seed, name_looks) and "[ref#" not in plain
            assert [text.count(f"[ref#{k + 1}]") for k in range(len(spec.subjects))] == [1] * len(spec.subjects)
            starts = [text.index(f"[ref#{k + 1}]") for k in range(len(spec.subjects))]
            assert starts == sorted(starts)
            for k, subject in enumerate(spec.subjects):
                name = text[: starts[k]].split()[-1]  # the word just before [ref#k+1]: subject k's noun
                nouns = SHAPE_WORDS[subject.identity.shape] if name_looks else GENERIC_NOUNS
                assert any(n.endswith(name) for n in nouns), (text, k)
                if name_looks:  # and its colour a few words before (distinct colours: no other subject's)
                    assert subject.identity.colour in text[: starts[k]].split()[-5:], (text, k)
