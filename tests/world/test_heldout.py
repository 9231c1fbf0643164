from unoflux.world import heldout_identities, heldout_prompts, heldout_subject_pairs
from unoflux.world.heldout import tuning_prompts
from unoflux.world.specs import TwoPanelSpec


def test_heldout_prompts_are_fixed_and_use_only_heldout_identities():
    prompts = heldout_prompts()
    assert len(prompts) >= 200
    assert len({p.id for p in prompts}) == len(prompts)
    kinds = {p.kind for p in prompts}
    assert kinds == {"single", "multi", "two_panel"}
    held = set(heldout_identities())
    for p in prompts:
        scenes = (p.spec.left, p.spec.right) if isinstance(p.spec, TwoPanelSpec) else (p.spec,)
        assert all(s.identity in held for scene in scenes for s in scene.subjects)
    heldout_prompts.cache_clear()
    assert [p.to_dict() for p in heldout_prompts()] == [p.to_dict() for p in prompts]


def test_subject_pairs_reference_the_target_identities():
    pairs = heldout_subject_pairs()
    assert len(pairs) == 400
    for pair in pairs:
        assert pair.references == tuple(s.identity for s in pair.target.subjects)
        assert all(r.is_heldout for r in pair.references)
    assert any(len(p.references) == 2 for p in pairs)
    assert heldout_subject_pairs() is pairs  # built once (lru_cache), like heldout_prompts
    heldout_subject_pairs.cache_clear()
    assert [p.to_dict() for p in heldout_subject_pairs()] == [p.to_dict() for p in pairs]


def test_tuning_prompts_are_fixed_and_share_no_identity_or_caption_with_the_heldout_set():
    prompts = tuning_prompts(single=4, multi=6, two_panel=6)
    assert [p.kind for p in prompts] == ["single"] * 4 + ["multi"] * 6 + ["two_panel"] * 6
    for p in prompts:
        scenes = (p.spec.left, p.spec.right) if isinstance(p.spec, TwoPanelSpec) else (p.spec,)
        assert not any(s.identity.is_heldout for scene in scenes for s in scene.subjects)
    assert not {p.caption for p in prompts} & {p.caption for p in heldout_prompts()}
    tuning_prompts.cache_clear()
    assert [p.to_dict() for p in tuning_prompts(single=4, multi=6, two_panel=6)] == [p.to_dict() for p in prompts]


def test_subject_captions_with_placeholders_are_the_held_out_ones_naming_references_in_order():
    from unoflux.world.heldout import subject_caption

    for pair in heldout_subject_pairs():
        assert subject_caption(pair) == pair.caption
        text = subject_caption(pair, placeholders=True)
        starts = [text.index(f"[ref#{k + 1}]") for k in range(len(pair.references))]
        assert starts == sorted(starts) and "[ref#" not in pair.caption
        for k, identity in enumerate(pair.references):  # reference k is the subject named by [ref#k+1]
            assert identity.colour in text[: starts[k]].split()[-5:], text
            text = text.replace(f" [ref#{k + 1}]", "")
        assert text == pair.caption
