"""addresses.route(): the address contract of DESIGN.md, as one pure function."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listbridge import addresses
from listbridge.addresses import (
    APPROVE,
    CONFIRM,
    HELP,
    OWNER,
    POST,
    REJECT,
    SUBSCRIBE,
    TOKEN_ALPHABET,
    UNSUBSCRIBE,
    UNSUBSCRIBE_TOKEN,
    Recipient,
    new_token,
    route,
    split_address,
    subaddress,
)

LISTS = ["bla@bla.example.org", "autre@bla.example.org", "bla@other.example"]
TOKEN = "mfrggzdfmztwq2lknnwg23tpobyxe43u"


@pytest.mark.parametrize(
    "address, action, token",
    [
        ("bla@bla.example.org", POST, ""),
        ("bla+subscribe@bla.example.org", SUBSCRIBE, ""),
        ("bla+unsubscribe@bla.example.org", UNSUBSCRIBE, ""),
        (f"bla+confirm-{TOKEN}@bla.example.org", CONFIRM, TOKEN),
        (f"bla+unsubscribe-{TOKEN}@bla.example.org", UNSUBSCRIBE_TOKEN, TOKEN),
        ("bla+help@bla.example.org", HELP, ""),
        ("bla+owner@bla.example.org", OWNER, ""),
        (f"bla+approve-{TOKEN}@bla.example.org", APPROVE, TOKEN),
        (f"bla+reject-{TOKEN}@bla.example.org", REJECT, TOKEN),
    ],
)
def test_routing_table(address, action, token):
    assert route(address, LISTS) == Recipient("bla@bla.example.org", action, token)


def test_each_list_gets_its_own_mail():
    assert route("autre+help@bla.example.org", LISTS) == Recipient("autre@bla.example.org", HELP)
    assert route("bla+help@other.example", LISTS) == Recipient("bla@other.example", HELP)


@pytest.mark.parametrize(
    "address, action, token",
    [
        ("BLA@BLA.EXAMPLE.ORG", POST, ""),
        ("Bla+Subscribe@Bla.Example.Org", SUBSCRIBE, ""),
        ("bla+UNSUBSCRIBE@bla.example.org", UNSUBSCRIBE, ""),
        ("bla+Confirm-MFRGGZDF@bla.example.org", CONFIRM, "mfrggzdf"),  # an MTA that upper-cases
        ("bla+UnSubscribe-MfRgGzDf@bla.example.org", UNSUBSCRIBE_TOKEN, "mfrggzdf"),
        ("BLA+OWNER@bla.EXAMPLE.org", OWNER, ""),
        ("<bla+help@bla.example.org>", HELP, ""),
        ("  bla@bla.example.org  ", POST, ""),
    ],
)
def test_case_is_folded_and_tokens_come_back_lower_case(address, action, token):
    assert route(address, LISTS) == Recipient("bla@bla.example.org", action, token)


def test_configured_lists_are_folded_too():
    assert route("bla+help@bla.example.org", ["BLA@Bla.Example.ORG"]) == Recipient("bla@bla.example.org", HELP)


@pytest.mark.parametrize(
    "address",
    [
        "nobody@bla.example.org",  # unknown list
        "bla@example.org",  # unknown domain
        "bla@bla.example.org.evil.example",
        "bla@sub.bla.example.org",
        "bla+nope@bla.example.org",  # unknown sub-address
        "bla+@bla.example.org",
        "bla+confirm@bla.example.org",  # confirm needs a token
        "bla+confirm-@bla.example.org",
        "bla+approve@bla.example.org",  # approve and reject need a token
        "bla+reject-@bla.example.org",
        "bla+help-abc@bla.example.org",  # help takes no token
        "bla+owner-abc@bla.example.org",
        "bla+subscribe-abc@bla.example.org",
        "bla+confirm-abc1@bla.example.org",  # 1 is not in the base32 alphabet
        "bla+confirm-abc=@bla.example.org",
        "bla+confirm-ab cd@bla.example.org",
        "bla+confirm-abc+help@bla.example.org",
        "bla-help@bla.example.org",  # not the configured separator
        "bla",
        "",
        "@bla.example.org",
        "bla@",
        "blabla@bla.example.org",
        "bl@bla.example.org",
    ],
)
def test_not_ours(address):
    assert route(address, LISTS) is None


@pytest.mark.parametrize(
    "address",
    [
        "\u212a@bla.example.org",  # KELVIN SIGN: str.lower() would make it "k"
        "bla+\u212aelp@bla.example.org",
        "bla+confirm-\u212a\u212a@bla.example.org",
        "bl\u0131@bla.example.org",  # dotless i
    ],
)
def test_non_ascii_look_alikes_are_not_folded_into_ascii(address):
    lists = ["k@bla.example.org", "bla@bla.example.org", "bli@bla.example.org"]
    assert route(address, lists) is None


def test_configurable_separator():
    assert route("bla-subscribe@bla.example.org", LISTS, separator="-") == Recipient("bla@bla.example.org", SUBSCRIBE)
    assert route(f"bla-confirm-{TOKEN}@bla.example.org", LISTS, "-") == Recipient("bla@bla.example.org", CONFIRM, TOKEN)
    assert route(f"bla-unsubscribe-{TOKEN}@bla.example.org", LISTS, "-") == Recipient(
        "bla@bla.example.org", UNSUBSCRIBE_TOKEN, TOKEN
    )
    assert route("bla+subscribe@bla.example.org", LISTS, separator="-") is None
    assert subaddress("bla@bla.example.org", "help", "-") == "bla-help@bla.example.org"


def test_list_names_containing_the_other_separator():
    lists = ["my-list@bla.example.org"]
    assert route("my-list+help@bla.example.org", lists) == Recipient("my-list@bla.example.org", HELP)
    assert route("my-list@bla.example.org", lists) == Recipient("my-list@bla.example.org", POST)
    assert route("my+help@bla.example.org", lists) is None


def test_split_address():
    assert split_address("Carole@Example.NET") == ("Carole", "example.net")
    assert split_address('"a@b"@example.net') == ('"a@b"', "example.net")
    for bad in ("", "carole", "@example.net", "carole@"):
        with pytest.raises(ValueError):
            split_address(bad)


def test_subaddress():
    assert subaddress("bla@bla.example.org", f"confirm-{TOKEN}") == f"bla+confirm-{TOKEN}@bla.example.org"


def test_doctests_of_the_module_pass():
    result = doctest.testmod(addresses)
    assert result.attempted > 0
    assert result.failed == 0


def test_token_alphabet_is_lower_case_base32():
    assert set("abcdefghijklmnopqrstuvwxyz234567") == TOKEN_ALPHABET
    token = new_token()
    assert set(token) <= TOKEN_ALPHABET and len(token) == 26


# --- properties --------------------------------------------------------------------------

list_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=20).filter(
    lambda s: not s.startswith(".")
)
domains = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10), min_size=1, max_size=4
).map(".".join)
list_addresses = st.builds(lambda n, d: f"{n}@{d}", list_names, domains)
tokens = st.text(alphabet=sorted(TOKEN_ALPHABET), min_size=1, max_size=64)
separators = st.sampled_from("+-=")


@settings(max_examples=200)
@given(st.text(), st.lists(list_addresses, max_size=3), separators)
def test_route_never_raises_and_only_returns_configured_lists(address, lists, separator):
    recipient = route(address, lists, separator)
    assert recipient is None or recipient.list_address in lists


@settings(max_examples=200)
@given(list_addresses, st.text(max_size=40), st.lists(list_addresses, max_size=3))
def test_mutated_list_addresses_only_route_to_configured_lists(mlist, sub, others):
    recipient = route(subaddress(mlist, sub), others)
    assert recipient is None or recipient.list_address in others


@settings(max_examples=200)
@given(list_addresses, tokens, separators, st.booleans())
def test_tokens_round_trip(mlist, token, separator, upper):
    """A token in the alphabet, in an address built with subaddress(), comes back intact,
    even through an MTA that upper-cases the whole address."""
    for name, action in (("confirm", CONFIRM), ("unsubscribe", UNSUBSCRIBE_TOKEN)):
        address = subaddress(mlist, f"{name}-{token}", separator)
        recipient = route(address.upper() if upper else address, [mlist], separator)
        assert recipient == Recipient(mlist, action, token)


@settings(max_examples=50)
@given(list_addresses)
def test_generated_tokens_round_trip(mlist):
    token = new_token()
    assert route(subaddress(mlist, f"confirm-{token}"), [mlist]) == Recipient(mlist, CONFIRM, token)


@settings(max_examples=200)
@given(list_addresses, st.sampled_from(sorted(addresses.SUBADDRESSES)), separators)
def test_every_plain_subaddress_round_trips(mlist, name, separator):
    recipient = route(subaddress(mlist, name, separator), [mlist], separator)
    assert recipient == Recipient(mlist, addresses.SUBADDRESSES[name])
