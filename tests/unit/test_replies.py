"""Inbound reply classification: keywords, plain-language opt-outs, negation, ambiguity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartback.core.replies import ReplyKind, classify_reply, fold, tokenize

STOP, START, HELP, OTHER = ReplyKind.STOP, ReplyKind.START, ReplyKind.HELP, ReplyKind.OTHER

# (text, kind, confident)
PHRASINGS: list[tuple[str, ReplyKind, bool]] = [
    # exact keywords, any case, punctuation and emoji around them
    ("STOP", STOP, True),
    ("stop", STOP, True),
    (" Stop. ", STOP, True),
    ("STOP!!! 🛑", STOP, True),
    ("STOPALL", STOP, True),
    ("stop all", STOP, True),
    ("Unsubscribe", STOP, True),
    ("CANCEL", STOP, True),
    ("end", STOP, True),
    ("Quit", STOP, True),
    ("revoke", STOP, True),
    ("OPTOUT", STOP, True),
    ("opt out", STOP, True),
    ("Opt-Out", STOP, True),
    ("remove", STOP, True),
    ("S.T.O.P", STOP, True),
    ("ＳＴＯＰ", STOP, True),
    ("STOPP", STOP, True),
    ("Avmeld", STOP, True),
    ("AFMELD", STOP, True),
    ("avsluta", STOP, True),
    ("AVSLUTT", STOP, True),
    ("ARRÊT", STOP, True),
    ("arret", STOP, True),
    ("Désabonner", STOP, True),
    ("ABMELDEN", STOP, True),
    ("abbestellen", STOP, True),
    ("BAJA", STOP, True),
    ("parar", STOP, True),
    ("Detener", STOP, True),
    ("basta", STOP, True),
    ("CANCELLA", STOP, True),
    ("afmelden", STOP, True),
    ("stoppen", STOP, True),
    ("WYPISZ", STOP, True),
    ("lopeta", STOP, True),
    ("stop please", STOP, True),
    ("STOP STOP STOP", STOP, True),
    ("Stop now thanks", STOP, True),
    ("arrêt svp", STOP, True),
    ("Stopp takk", STOP, True),
    ("START", START, True),
    ("unstop", START, True),
    ("Yes!", START, True),
    ("subscribe", START, True),
    ("start please", START, True),
    ("HELP", HELP, True),
    ("info", HELP, True),
    ("hjelp", HELP, True),
    ("HJÆLP", HELP, True),
    ("hjälp", HELP, True),
    ("Aide", HELP, True),
    ("HILFE", HELP, True),
    ("ayuda", HELP, True),
    ("aiuto", HELP, True),
    # plain-language opt-outs, English
    ("please stop texting me", STOP, True),
    ("Stop sending me messages", STOP, True),
    ("no more texts pls", STOP, True),
    ("No more messages!", STOP, True),
    ("take me off your list", STOP, True),
    ("Please remove me from your list", STOP, True),
    ("unsubscribe me", STOP, True),
    ("I unsubscribed already, why am I still getting these?", STOP, True),
    ("how do I unsubscribe", STOP, True),
    ("Don't text me", STOP, True),
    ("do not contact me again", STOP, True),
    ("never message me again", STOP, True),
    ("why don't you stop texting me", STOP, True),
    ("stop these texts", STOP, True),
    ("stop it", STOP, True),
    ("quit messaging me", STOP, True),
    ("leave me alone", STOP, True),
    ("opt me out", STOP, True),
    ("delete my number", STOP, True),
    ("cancel my subscription please", STOP, True),
    ("I don't want any more texts", STOP, True),
    ("Stop. I bought it already.", STOP, True),
    ("Who is this? STOP", STOP, True),
    ("stop texting me or I will report you to the FCC", STOP, True),
    # Norwegian, Danish, Swedish
    ("ikke send flere meldinger", STOP, True),
    ("Send meg ikke flere sms", STOP, True),
    ("ingen flere meldinger takk", STOP, True),
    ("slutt å sende meg sms", STOP, True),
    ("meld meg av", STOP, True),
    ("stop med at sende beskeder", STOP, True),
    ("send ikke flere beskeder", STOP, True),
    ("afmeld mig tak", STOP, True),
    ("slutta skicka", STOP, True),
    ("sluta skicka sms till mig", STOP, True),
    ("skicka inte fler sms", STOP, True),
    ("inga fler meddelanden", STOP, True),
    ("ta bort mig", STOP, True),
    # German
    ("hör auf", STOP, True),
    ("Hören Sie auf!", STOP, True),
    ("keine SMS mehr bitte", STOP, True),
    ("bitte nicht mehr schreiben", STOP, True),
    ("Schreiben Sie mir nicht mehr", STOP, True),
    ("Löschen Sie meine Nummer", STOP, True),
    # French
    ("arrêtez", STOP, True),
    ("Arrêtez de m'envoyer des messages", STOP, True),
    ("ne m'envoyez plus de sms", STOP, True),
    ("plus de sms svp", STOP, True),
    ("désinscrivez-moi", STOP, True),
    ("je ne veux plus recevoir vos messages", STOP, True),
    # Spanish
    ("no me envíen más", STOP, True),
    ("No me manden más mensajes por favor", STOP, True),
    ("dejen de enviarme mensajes", STOP, True),
    ("quiero darme de baja", STOP, True),
    ("no más mensajes", STOP, True),
    ("quítenme de la lista", STOP, True),
    # Italian
    ("basta messaggi", STOP, True),
    ("smettetela", STOP, True),
    ("non inviatemi più messaggi", STOP, True),
    ("non voglio più messaggi", STOP, True),
    ("cancellatemi", STOP, True),
    # Dutch
    ("geen berichten meer aub", STOP, True),
    ("stop met sturen", STOP, True),
    ("hou op", STOP, True),
    ("meld me af", STOP, True),
    ("stuur me niets meer", STOP, True),
    # Finnish
    ("lopettakaa", STOP, True),
    ("älä lähetä enää viestejä", STOP, True),
    ("ei enää viestejä kiitos", STOP, True),
    ("poista minut", STOP, True),
    # Polish
    ("przestańcie", STOP, True),
    ("nie wysyłajcie mi sms", STOP, True),
    ("wypisz mnie", STOP, True),
    ("usuń mój numer", STOP, True),
    ("nie chcę więcej sms", STOP, True),
    # readings that opt out but are flagged
    ("not interested", STOP, False),
    ("wrong number", STOP, False),
    ("I never signed up for this", STOP, False),
    ("🛑", STOP, False),
    ("stop by the store tomorrow?", STOP, False),
    ("when does the sale end", STOP, False),
    ("I want to cancel my order", STOP, False),
    ("STOP HELP", STOP, False),
    ("I already paid so please just stop", STOP, False),
    # negation: not a stop, flagged
    ("don't stop", OTHER, False),
    ("do not stop", OTHER, False),
    ("Please don't stop sending me deals!", OTHER, False),
    ("n'arrêtez pas", OTHER, False),
    ("stopp ikke", OTHER, False),
    ("älä lopeta", OTHER, False),
    ("nie przestawajcie", OTHER, False),
    ("non smettete", OTHER, False),
    # long messages with a stop word used as an ordinary verb
    ("can you stop by the store tomorrow to pick up my order", OTHER, False),
    ("please remove the extra item from my cart, I only want one of them", OTHER, False),
    ("I will be there at the end of the week to pick it up", OTHER, False),
    # help in context, start in context, declines, ordinary replies
    ("help me with my order", HELP, False),
    ("who is this?", HELP, False),
    ("yes I want the red one", OTHER, False),
    ("no thanks", OTHER, False),
    ("No", OTHER, False),
    ("Thanks, I'll check out later today", OTHER, True),
    ("Is the discount code still valid?", OTHER, True),
    ("I didn't get the discount code", OTHER, True),
    ("Do you ship to Canada?", OTHER, True),
    ("Hei, når kommer pakken?", OTHER, True),
    ("Wann endet der Sale?", OTHER, True),
    ("¿Cuándo me envían el pedido?", OTHER, True),
    ("No me enviaron el código", OTHER, True),
    ("Nie ma wysyłki do Polski?", OTHER, True),
    ("Hou me op de hoogte", OTHER, True),
    ("Please don't send the package yet", OTHER, True),
    ("opt in", OTHER, True),
    ("", OTHER, True),
    ("😀👍", OTHER, True),
    ("td bank", OTHER, True),
]


@pytest.mark.parametrize(("text", "kind", "confident"), PHRASINGS)
def test_real_world_phrasings(text: str, kind: ReplyKind, confident: bool) -> None:
    result = classify_reply(text)
    assert (result.kind, result.confident) == (kind, confident), result.reason


def test_table_is_broad() -> None:
    assert len(PHRASINGS) >= 80
    assert len({text for text, _, _ in PHRASINGS}) == len(PHRASINGS)


@pytest.mark.parametrize(
    ("text", "keyword", "language"),
    [
        ("ARRÊT", "ARRET", "fr"),
        ("Stop!", "STOP", None),
        ("hjælp", "HJAELP", "da"),
        ("opt-out", "OPT OUT", "en"),
        ("slutta skicka", "SLUTTA SKICKA", "sv"),
        ("keine SMS mehr", "KEINE SMS MEHR", "de"),
    ],
)
def test_keyword_and_language_reported(text: str, keyword: str, language: str | None) -> None:
    result = classify_reply(text)
    assert (result.keyword, result.language) == (keyword, language)


def test_negation_reason_explains() -> None:
    result = classify_reply("don't stop")
    assert "negated" in result.reason and result.keyword is None


def test_extra_stop_words() -> None:
    assert classify_reply("SLUTA NU").kind is STOP
    assert classify_reply("pasta").kind is OTHER
    result = classify_reply("Pasta!", extra_stop_words={"PASTA", "nope nope"})
    assert (result.kind, result.confident) == (STOP, True)
    assert classify_reply("nope nope", extra_stop_words=["nope nope"]).kind is STOP
    with pytest.raises(ValueError, match="collection"):
        classify_reply("stop", extra_stop_words="stopp")
    with pytest.raises(ValueError, match="no letters"):
        classify_reply("stop", extra_stop_words=["!!"])


def test_non_string_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="string"):
        classify_reply(b"STOP")  # type: ignore[arg-type]


def test_fold_and_tokenize() -> None:
    assert fold("ARRÊT HJÆLP Łódź ØL") == "arret hjaelp lodz ol"
    assert tokenize("Don't stop, n'arrêtez pas!") == ["dont", "stop", "|", "n", "arretez", "pas"]
    assert tokenize("sms'er") == ["smser"]


STOP_WORDS = [
    "stop",
    "stopall",
    "unsubscribe",
    "cancel",
    "end",
    "quit",
    "revoke",
    "optout",
    "opt out",
    "opt-out",
    "remove",
    "stopp",
    "arrêt",
    "arret",
    "avmeld",
    "baja",
    "lopeta",
]
NOISE = st.text(alphabet=" \t\n.,!?;:-_*\"'()[]🛑😡🙏✋⛔❤️👍", max_size=4)


@given(
    word=st.sampled_from(STOP_WORDS),
    cases=st.lists(st.booleans(), min_size=20, max_size=20),
    before=NOISE,
    after=NOISE,
)
def test_stop_keyword_alone_in_any_case_and_noise_is_stop(
    word: str, cases: list[bool], before: str, after: str
) -> None:
    cased = "".join(c.upper() if up else c.lower() for c, up in zip(word, cases, strict=False))
    result = classify_reply(before + cased + after)
    assert result.kind is STOP and result.confident, (before + cased + after, result)


@given(text=st.text(max_size=300))
def test_any_text_is_classified_without_error(text: str) -> None:
    result = classify_reply(text)
    assert result.kind in ReplyKind
    assert result.reason


@given(
    text=st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    word=st.sampled_from(["stop", "ARRÊT", "STOPP"]),
)
def test_any_text_with_stop_words_is_classified_without_error(text: str, word: str) -> None:
    result = classify_reply(f"{text} {word} {text}")
    assert result.kind in ReplyKind


def test_huge_input_is_linear_enough() -> None:
    assert classify_reply("stop by. " * 5000).kind is OTHER
    assert classify_reply("blah " * 20000 + "STOP").kind is STOP
