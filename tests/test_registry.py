"""The public registry: `dst.updaters.register`/`get` and `dst.callbacks.get` by name."""

import inspect
import re

import numpy as np
import pytest
from conftest import data, mlp

import dst
from dst.updaters import registry


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    """Each test registers into a copy of dst's own entries: names it adds are
    gone afterwards, and names added elsewhere in this process (the registry's
    doctest registers one) are not seen."""
    own = {name: cls for name, cls in registry._REGISTRY.items()
           if cls.__module__.startswith("dst.updaters.") and cls.__module__ != registry.__name__}
    monkeypatch.setattr(registry, "_REGISTRY", own)


class Flip(dst.updaters.Updater):
    """Swaps active and inactive connections (at 50% sparsity the count stays).

    Args:
        tag: any label, kept as `self.tag`.
        update_freq: steps between updates. Defaults to 100.
        end_step: last update step. Defaults to 0.
        seed: unused. Defaults to None.
    """

    def __init__(self, tag, *, update_freq=100, end_step=0, seed=None):
        super().__init__(update_freq=update_freq, end_step=end_step, seed=seed)
        self.tag = tag

    def new_mask(self, kit, weight, mask, grad, value, salt):
        return kit.xp.logical_not(mask)


def test_builtin_updaters_are_registered_by_name_in_any_case():
    assert {n: dst.updaters.get(n) for n in ("fixed", "magnitude", "set", "rigl", "granet",
                                                 "srigl", "snfs")} == {
        "fixed": dst.updaters.FixedMasks, "magnitude": dst.updaters.MagnitudePruning,
        "set": dst.updaters.SET, "rigl": dst.updaters.RigL, "granet": dst.updaters.GraNet,
        "srigl": dst.updaters.SRigL, "snfs": dst.updaters.SNFS}
    assert dst.updaters.get("RigL") is dst.updaters.RigL


def test_every_registered_updater_is_an_attribute_and_has_its_callback():
    # The package's modules register themselves: any one added is listed here.
    assert registry.names() == sorted(registry._REGISTRY)
    for name in registry.names():
        cls = dst.updaters.get(name)
        assert getattr(dst.updaters, cls.__name__) is cls
        callback = getattr(dst.callbacks, cls.__name__)
        assert callback is dst.callbacks.base.callback_class(cls)
        assert callback.updater_class is cls and callback.__module__ == "dst.callbacks"
        assert type(dst.callbacks.get(name, **({"final_sparsity": 0.5} if "final_sparsity" in
                                               inspect.signature(cls).parameters else {}))) \
            is callback
    with pytest.raises(AttributeError, match=r"module 'dst\.callbacks' has no attribute 'Nope'"):
        _ = dst.callbacks.Nope


def test_unknown_updater_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown dst updater: 'snip'\. Known updaters: "
                                         + re.escape(str(registry.names()))):
        dst.updaters.get("snip")
    with pytest.raises(ValueError, match=r"Unknown dst updater: 3\."):
        dst.updaters.get(3)


def test_register_returns_the_class_and_lowercases_the_name():
    assert dst.updaters.register("FLIP")(Flip) is Flip
    assert dst.updaters.get("flip") is Flip
    assert registry.name_of(Flip) == "flip"
    dst.updaters.register("flip")(Flip)  # the same class again: fine (a re-run cell)
    assert "flip" in registry.names() and registry.names() == sorted(registry._REGISTRY)


def test_register_refuses_a_taken_name_naming_both_classes():
    with pytest.raises(ValueError, match=r"the name 'rigl' is already taken by "
                                         r"dst\.updaters\.rigl\.RigL; cannot register "
                                         r"test_registry\.Flip under it"):
        dst.updaters.register("RigL")(Flip)
    assert dst.updaters.get("rigl") is dst.updaters.RigL


def test_register_refuses_what_is_not_an_updater_or_a_bad_name():
    with pytest.raises(TypeError, match=r"register\('thing'\) decorates subclasses of "
                                        r"dst\.updaters\.Updater\. Received: <class 'dict'>"):
        dst.updaters.register("thing")(dict)
    with pytest.raises(TypeError, match=r"Received: <function"):
        dst.updaters.register("thing")(lambda: None)
    with pytest.raises(TypeError, match=r"`name` must be a string.*Received: name=<class"):
        dst.updaters.register(Flip)
    with pytest.raises(ValueError, match=r"`name` must not be empty.*Received: name=' '"):
        dst.updaters.register(" ")
    assert "thing" not in registry.names()


def test_callbacks_get_builds_a_ready_callback_by_name():
    cb = dst.callbacks.get("rigl", update_freq=50, seed=0)
    assert type(cb) is dst.callbacks.RigL
    assert type(cb.updater) is dst.updaters.RigL
    assert (cb.updater.update_freq, cb.updater.seed) == (50, 0)
    cb = dst.callbacks.get("Magnitude", final_sparsity=0.7, power=2, verbose=1)
    assert type(cb) is dst.callbacks.MagnitudePruning
    assert (cb.updater.final_sparsity, cb.updater.power, cb.verbose) == (0.7, 2.0, 1)
    assert type(dst.callbacks.get("fixed")) is dst.callbacks.FixedMasks


def test_callbacks_get_returns_an_instance_as_is_and_builds_from_a_config():
    cb = dst.callbacks.SET(drop_fraction=0.2)
    assert dst.callbacks.get(cb) is cb
    back = dst.callbacks.get({"class_name": "set", "config": cb.get_config()})
    assert type(back) is dst.callbacks.SET
    assert back.get_config() == cb.get_config()
    assert back.updater.drop_fraction == 0.2
    with pytest.raises(ValueError, match=r"takes arguments only with a name; received SET"):
        dst.callbacks.get(cb, seed=1)
    with pytest.raises(ValueError, match=r"needs 'class_name'.*Received: \{'config': \{\}\}"):
        dst.callbacks.get({"config": {}})


def test_callbacks_get_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown dst callback: 'snip'\. Known callbacks: "
                                         + re.escape(str(registry.names()))
                                         + r"\. Add one by registering"):
        dst.callbacks.get("snip")
    with pytest.raises(ValueError, match=r"Unknown dst callback: None"):
        dst.callbacks.get(None)


def test_callbacks_get_rejects_arguments_the_updater_does_not_take():
    with pytest.raises(TypeError, match=r"RigL: got an unexpected keyword argument 'power'\. "
                                        r"It takes the arguments of dst\.updaters\.RigL: "
                                        r"\(\*, update_freq"):
        dst.callbacks.get("rigl", power=3)
    with pytest.raises(TypeError, match=r"MagnitudePruning: missing a required argument: "
                                        r"'final_sparsity'"):
        dst.callbacks.get("magnitude")


def test_named_callbacks_take_their_updaters_signature_plus_optimizer_and_verbose():
    for cb_cls, up_cls in [(dst.callbacks.SET, dst.updaters.SET),
                           (dst.callbacks.RigL, dst.updaters.RigL),
                           (dst.callbacks.MagnitudePruning, dst.updaters.MagnitudePruning),
                           (dst.callbacks.FixedMasks, dst.updaters.FixedMasks)]:
        params = list(inspect.signature(cb_cls).parameters.values())
        assert params[:-3] == list(inspect.signature(up_cls).parameters.values())
        assert [(p.name, p.kind, p.default) for p in params[-3:]] == [
            ("optimizer", inspect.Parameter.KEYWORD_ONLY, None),
            ("steps_from", inspect.Parameter.KEYWORD_ONLY, "fit"),
            ("verbose", inspect.Parameter.KEYWORD_ONLY, 0)]
        assert cb_cls.updater_class is up_cls
        # help() shows the updater's arguments: its Args section is in the docstring.
        for p in params:
            assert f"\n    {p.name}: " in cb_cls.__doc__, (cb_cls, p.name)
    assert list(inspect.signature(dst.callbacks.DSTCallback).parameters) == [
        "updater", "optimizer", "steps_from", "verbose"]


def test_dst_callback_wraps_an_updater_instance():
    updater = dst.updaters.SET(update_freq=5, seed=0)
    cb = dst.callbacks.DSTCallback(updater, verbose=1)
    assert cb.updater is updater and cb.verbose == 1
    assert dst.callbacks.DSTCallback(updater=updater).updater is updater
    with pytest.raises(TypeError, match=r"`updater` must be a dst\.updaters\.Updater instance "
                                        r"for DSTCallback\. Received: updater='rigl'"):
        dst.callbacks.DSTCallback("rigl")
    with pytest.raises(TypeError, match=r"DSTCallback takes one updater instance"):
        dst.callbacks.DSTCallback()
    with pytest.raises(NotImplementedError, match=r"DSTCallback\(updater\) has no config"):
        cb.get_config()


def test_a_registered_custom_updater_is_a_callback_by_name():
    dst.updaters.register("flip")(Flip)
    cb = dst.callbacks.get("flip", tag="x", update_freq=3)
    assert isinstance(cb, dst.callbacks.DSTCallback)
    assert type(cb).__name__ == "Flip" and type(cb).updater_class is Flip
    assert type(cb.updater) is Flip and cb.updater.tag == "x"
    assert list(inspect.signature(type(cb)).parameters) == [
        "tag", "update_freq", "end_step", "seed", "optimizer", "steps_from", "verbose"]
    assert "\n    tag: any label" in type(cb).__doc__
    config = cb.get_config()
    assert config == {"tag": "x", "update_freq": 3, "end_step": 0, "seed": None,
                      "steps_from": "fit", "verbose": 0}
    again = dst.callbacks.get({"class_name": "flip", "config": config})
    assert type(again) is type(cb) and again.get_config() == config

    # And it runs in fit: one update at step 0 swaps every mask.
    model = mlp(sparsity=0.5)
    model.compile("sgd", "mse")
    before = dst.get_masks(model)
    model.fit(*data(16), batch_size=8, verbose=0, callbacks=[cb])
    after = dst.get_masks(model)
    assert sorted(after) == sorted(before) and len(after) == 2
    for k in before:
        np.testing.assert_array_equal(after[k], ~before[k])


def test_a_new_updater_argument_reaches_the_callback_with_no_edit():
    @dst.updaters.register("flip2")
    class Flip2(Flip):
        def __init__(self, tag, *, extra=7, **kwargs):
            super().__init__(tag, **kwargs)
            self.extra = extra

    cb = dst.callbacks.get("flip2", tag="y", extra=9, update_freq=2)
    assert (cb.updater.extra, cb.updater.update_freq) == (9, 2)
    assert cb.get_config() == {"tag": "y", "extra": 9, "update_freq": 2, "steps_from": "fit",
                               "verbose": 0}


def test_an_updater_argument_named_like_a_callback_argument_is_refused():
    class Clash(Flip):
        def __init__(self, verbose=0):
            super().__init__("t")

    with pytest.raises(TypeError, match=r"Clash's constructor takes \['verbose'\], which its "
                                        r"callback Clash takes itself"):
        dst.callbacks.base.callback_class(Clash)
