"""Provenance records and the certificates derived from them."""

import numpy as np
import pytest

from dkvb_jax.encoders import encoder_provenance
from dkvb_jax.provenance import Certificate, Part, Provenance, Rows, approximate, certify

D = "toy/train"
OTHER = (Rows("other/train"),)


def prov(encoder=(), preprocess=(), keys=OTHER, within=None) -> Provenance:
    return Provenance(
        D,
        (
            Part("encoder", "pretrained", encoder),
            Part("preprocess", "lda", preprocess),
            Part("keys", "ema_kmeans", keys),
            Part("values", "label_counts", (Rows(D),), True),
        ),
        data_within=within,
    )


@pytest.mark.parametrize(
    "record, certified, blames",
    [
        (prov(), True, ()),
        (prov(keys=(Rows(D, [0, 1, 2]),)), True, ()),
        (prov(keys=(Rows(D, [7, 8]),)), False, ("keys",)),
        (prov(preprocess=(Rows(D, labels=True),)), False, ("preprocess",)),
        (prov(encoder=(Rows(D, labels=True),), keys=(Rows(D),)), False, ("encoder", "keys")),
        (prov(encoder=None), False, ("encoder",)),
        (
            Provenance(D, (Part("keys", "ema_kmeans", ()),)),
            False,
            ("encoder", "preprocess", "values"),
        ),
        # A sample of a set the encoder was trained on: its rows may be any of that set's.
        (prov(encoder=(Rows("big/train"),), within="big/train"), False, ("encoder",)),
        (prov(encoder=(Rows("big/train"),)), True, ()),
    ],
)
def test_certify_names_every_part_that_saw_the_rows(record, certified, blames):
    cert = certify(record, [8, 9])
    assert cert.certified is certified and cert.values_exact
    assert cert.parts_that_saw == blames
    for part in blames:
        assert f"the {part} (" in cert.reason
    assert cert.reason.startswith("certified exact" if certified else "values exact, not certified")


def test_certificate_is_only_withdrawn_never_granted():
    cert = certify(prov(), [1])
    gone = cert.withdrawn("the encoder was fine-tuned on these rows")
    assert cert.certified and not gone.certified and "fine-tuned" in gone.reason
    refused = certify(prov(keys=(Rows(D),)), [1])
    assert refused.withdrawn("x") is refused
    assert not approximate("uva").certified and not approximate("uva").values_exact
    assert Certificate.from_dict(gone.to_dict()) == gone


def test_json_roundtrip_stores_contiguous_ids_as_ranges():
    ids = np.concatenate([np.arange(45_000, 50_000), [3, 7]])
    record = prov(keys=(Rows(D, ids),), preprocess=(Rows(D, ids, labels=True),))
    d = record.to_dict()
    assert d["parts"][2]["rows"][0]["ids"] == [[3, 4], [7, 8], [45_000, 50_000]]
    assert Provenance.from_dict(d) == record


@pytest.mark.parametrize(
    "bad, error",
    [
        (lambda: Rows("", [1]), ValueError),
        (lambda: Rows(D, [-1]), ValueError),
        (lambda: Rows(D, [[1, 2]]), TypeError),
        (lambda: Part("head", "x", ()), ValueError),
        (lambda: Provenance(D, (Part("keys", "a", ()), Part("keys", "b", ()))), ValueError),
        (lambda: Provenance.from_dict({"parts": []}), ValueError),
        (lambda: certify(prov(), [1.5]), TypeError),
    ],
)
def test_bad_records_are_refused(bad, error):
    with pytest.raises(error):
        bad()


@pytest.mark.parametrize(
    "name, trained_on",
    [
        ("mobilenet_v1", "imagenet2012/train"),
        ("cifar_resnet20", "cifar10/train"),
        ("resnet50", "imagenet2012/train"),
    ],
)
def test_registered_encoders_declare_their_training_data(name, trained_on):
    (rows,) = encoder_provenance(name).rows
    assert rows.dataset == trained_on and rows.ids is None


def test_unregistered_encoder_has_no_recorded_data():
    assert encoder_provenance("no_such_encoder").rows is None
    assert encoder_provenance(None).rows is None
