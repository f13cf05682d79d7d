"""Classify an inbound SMS reply as STOP, START, HELP or OTHER, in several languages.

Providers only catch an exact single keyword, but the law counts any reasonable way of saying
stop ("stop please", "no more texts pls", "ikke send flere meldinger"). So the text is folded
(case, accents, punctuation, emoji), cut into words and clauses, and read in this order:

1. only keywords (plus politeness words): STOP / START / HELP, confident;
2. an opt-out phrase (stop verb + texting, "don't text me", "no more messages", "take me off
   your list" …) that is not negated ("don't stop texting me"): STOP, confident;
3. a STOP-family word on its own elsewhere: STOP unless negated or, in a longer message, used as
   an ordinary verb with some other object ("stop by the store …"); never confident;
4. HELP words: HELP, not confident; anything else: OTHER.

When unsure we opt out and flag (confident=False); docs/replies.md has the decision table.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class ReplyKind(StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ReplyClassification:
    kind: ReplyKind
    # The matched keyword or phrase, folded and upper-cased ("STOP", "ARRET", "NO MORE TEXTS").
    keyword: str | None
    confident: bool
    # The language the keyword or phrase belongs to; None for words shared by many (STOP, INFO).
    language: str | None
    reason: str


# ---------------------------------------------------------------------------------------------
# Folding and tokenising

# Letters that NFKD does not split into base + accent.
_LETTERS = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "ı": "i"})
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'", "´": "'"})
_CLAUSE_BREAKS = frozenset(".!?;:,\n\r¡¿…")
_BREAK = "|"
# French/Italian elision (m'envoyez, n'arrêtez, l'offre) splits; English contractions join (don't).
_ELISION = re.compile(r"\b(qu|[lmdnjstc])'(?=\w)")
_INNER_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def fold(text: str) -> str:
    """Case-, accent- and width-folded text: ARRÊT → arret, HJÆLP → hjaelp, ＳＴＯＰ → stop."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_LETTERS)
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def tokenize(text: str) -> list[str]:
    """Folded words, with "|" marking clause breaks (. ! ? , ; : newline)."""
    folded = fold(text).translate(_APOSTROPHES)
    folded = _INNER_APOSTROPHE.sub("", _ELISION.sub(r"\1 ", folded))
    spaced = "".join(
        char if char.isalnum() else f" {_BREAK} " if char in _CLAUSE_BREAKS else " "
        for char in folded
    )
    tokens: list[str] = []
    for token in spaced.split():
        if token == _BREAK and (not tokens or tokens[-1] == _BREAK):
            continue
        tokens.append(token)
    if tokens and tokens[-1] == _BREAK:
        tokens.pop()
    return tokens


def _words(tokens: Sequence[str]) -> list[str]:
    return [token for token in tokens if token != _BREAK]


def _phrase(text: str) -> tuple[str, ...]:
    words = tuple(_words(tokenize(text)))
    if not words:
        raise ValueError(f"keyword {text!r} has no letters or digits")
    return words


# ---------------------------------------------------------------------------------------------
# Keywords: a whole message made of these (and politeness words) is a confident classification.


@dataclass(frozen=True, slots=True)
class _Keyword:
    kind: ReplyKind
    language: str | None
    # Exact-only words are too common to count when they appear inside a longer message.
    exact_only: bool = False


def _keywords(
    kind: ReplyKind, table: Mapping[str | None, str], exact_only: bool = False
) -> dict[tuple[str, ...], _Keyword]:
    return {
        _phrase(word): _Keyword(kind, language, exact_only)
        for language, words in table.items()
        for word in words.split(",")
    }


_KEYWORDS: dict[tuple[str, ...], _Keyword] = {
    **_keywords(
        ReplyKind.STOP,
        {
            None: "STOP,STOPP",
            "en": "STOPALL,STOP ALL,UNSUBSCRIBE,CANCEL,END,QUIT,REVOKE,OPTOUT,OPT OUT,REMOVE",
            "nb": "AVMELD,AVSLUTT",
            "da": "AFMELD",
            "sv": "AVSLUTA",
            "fr": "ARRÊT,DÉSABONNER",
            "de": "ABMELDEN,ABBESTELLEN",
            "es": "BAJA,PARAR,DETENER",
            "it": "BASTA,CANCELLA",
            "nl": "AFMELDEN,STOPPEN",
            "pl": "WYPISZ",
            "fi": "LOPETA",
        },
    ),
    **_keywords(
        ReplyKind.STOP,
        {"en": "NO MORE", "nb": "SLUTT", "sv": "SLUTA", "fr": "TD"},
        exact_only=True,
    ),
    **_keywords(ReplyKind.START, {None: "START", "en": "UNSTOP,YES,SUBSCRIBE"}),
    **_keywords(
        ReplyKind.HELP,
        {
            None: "INFO",
            "en": "HELP",
            "nb": "HJELP",
            "da": "HJÆLP",
            "sv": "HJÄLP",
            "fr": "AIDE",
            "de": "HILFE",
            "es": "AYUDA",
            "it": "AIUTO",
        },
    ),
}
_LONGEST_KEYWORD = max(len(phrase) for phrase in _KEYWORDS)

# Politeness and filler: "stop please", "STOP NOW thanks", "arrêt svp" are still bare keywords.
_FILLER = frozenset(
    _words(
        tokenize(
            "please pls plz plez plse pleas thanks thank you thx ty tks now asap immediately "
            "already ok okay right just again sir madam bitte danke sofort merci svp stp "
            "s'il vous plaît por favor porfa favor gracias ya grazie per favore perfavore subito "
            "takk tack tak nå nu kiitos heti proszę dziękuję alstublieft aub graag dank "
            "vennligst venligst snälla"
        )
    )
)


# ---------------------------------------------------------------------------------------------
# Opt-out phrases, as token patterns over word classes.
#
# Pattern syntax, one element per space-separated item:
#   word|word   alternatives (natural spelling, folded at import; a trailing * matches a prefix)
#   @CLASS      alternatives from the class table (entries may be several words)
#   ~N          up to N arbitrary words of the same clause
#   $           the end of the clause
#   ? suffix    the element is optional

# Messages themselves, in every language: "no more texts", "keine SMS mehr", "inga fler sms".
# fmt: off
_MSG_NOUNS = (
    "text*", "txt*", "message*", "msg*", "sms*", "email*", "e-mail*", "spam*", "promo*", "ad",
    "ads", "advert*", "notification*", "marketing", "newsletter*", "melding*", "tekstmelding*",
    "epost*", "reklam*", "varsl*", "besked*", "mail*", "nyhedsbrev*", "meddelande*", "mejl*",
    "utskick*", "nachricht*", "werbung*", "textnachricht*", "texto*", "courriel*", "pub", "pubs",
    "publicite*", "mensaje*", "correo*", "promocion*", "publicidad", "messagg*", "promozion*",
    "pubblicita", "bericht*", "nieuwsbrie*", "viest*", "tekstiviest*", "mainos*", "markkinointi*",
    "wiadomos*", "esemes*", "powiadomien*",
)
# What messages carry: "stop the offers" is an opt-out, "I don't want the deal to end" is not.
_OFFER_NOUNS = (
    "offer*", "deal*", "reminder*", "alert*", "tilbud*", "erbjudande*", "angebot*", "offre*",
    "oferta*", "offert*", "aanbieding*",
)
# fmt: on

_CLASSES: dict[str, tuple[str, ...]] = {
    "STOP_EN": ("stop", "stopp", "quit", "cease", "end", "halt", "discontinue"),
    "STOP_STRONG_EN": ("stop", "stopp", "cease", "halt"),
    "IT_EN": ("it", "this", "that", "them", "now", "immediately", "everything", "all of it"),
    "COMM_ING_EN": (
        "texting",
        "txting",
        "messaging",
        "msging",
        "sending",
        "contacting",
        "emailing",
        "calling",
        "spamming",
        "bothering",
        "bugging",
        "harassing",
        "harrassing",
        "pinging",
    ),
    "COMM_VERB_EN": (
        "text",
        "txt",
        "message",
        "msg",
        "sms",
        "send",
        "contact",
        "email",
        "call",
        "spam",
        "bother",
        "bug",
        "harass",
        "ping",
    ),
    "NEG_EN": ("don't", "dont", "dnt", "do not", "never", "please don't"),
    "TO_ME_EN": (
        "me",
        "us",
        "my number",
        "this number",
        "any",
        "anymore",
        "again",
        "ever",
        "more",
        "another",
        "text*",
        "message*",
    ),
    "DET_EN": (
        "the",
        "these",
        "those",
        "this",
        "your",
        "ur",
        "all",
        "all the",
        "all these",
        "all your",
        "all of the",
        "all of these",
        "any",
        "any more",
        "stupid",
        "annoying",
        "marketing",
        "promotional",
        "spam",
        "sms",
        "text",
    ),
    "MSG_NOUN": _MSG_NOUNS,
    "COMM_NOUN": _MSG_NOUNS + _OFFER_NOUNS,
    "REMOVE_EN": ("remove", "delete", "erase"),
    "NEVER_EN": ("never", "didnt", "did not", "dnt"),
    "MY_NUMBER_EN": (
        "me",
        "us",
        "my number",
        "my phone",
        "my phone number",
        "my cell",
        "my info",
        "my details",
        "my data",
        "my contact",
        "my email",
        "this number",
    ),
    "LIST_EN": (
        "your list",
        "the list",
        "this list",
        "that list",
        "ur list",
        "your lists",
        "all lists",
        "your mailing list",
        "your texting list",
        "your sms list",
        "your contact list",
        "your marketing list",
        "the mailing list",
    ),
    # nb / da
    "COMM_VERB_NB": ("send", "sende", "sms", "kontakt", "kontakte", "ring", "skriv", "spam", "mas"),
    "MORE_NB": ("meg", "oss", "flere", "fler", "mer", "mere", "noe", "melding*", "sms*", "mig"),
    "STOP_DA": ("stop", "stoppe", "hold op", "hor op", "hold nu op"),
    "COMM_VERB_DA": ("send*", "skriv*", "kontakt*", "ring*", "spam*", "sms*"),
    # sv
    "COMM_VERB_SV": ("skicka*", "sms*", "messa*", "kontakta*", "ringa*", "spamma*", "skriva*"),
    # de
    "STOP_DE": ("hor auf", "horen sie auf", "hort auf", "horen sie bitte auf", "aufhoren"),
    "COMM_VERB_DE": (
        "schreiben",
        "senden",
        "zusenden",
        "schicken",
        "zuschicken",
        "kontaktieren",
        "anschreiben",
        "anrufen",
        "belastigen",
        "simsen",
        "nerven",
    ),
    "COMM_IMP_DE": (
        "schreiben sie",
        "schreibt",
        "schreib",
        "senden sie",
        "sendet",
        "schicken sie",
        "schickt",
        "schick",
        "kontaktieren sie",
    ),
    # fr
    "COMM_VERB_FR": (
        "envoy*",
        "envoi*",
        "ecri*",
        "contact*",
        "texto*",
        "harcel*",
        "spam*",
        "appel*",
    ),
    # es
    # Imperative, subjunctive and infinitive only: "no me enviaron nada" is a complaint.
    "COMM_VERB_ES": (
        *("envien", "envies", "envie", "envieis", "enviar*", "manden", "mandes", "mande"),
        *("mandar*", "escriban", "escribas", "escriba", "escribir*", "contacten", "contactes"),
        *("contactar*", "llamen", "llames", "llamar*", "molesten", "molestes", "molestar*"),
    ),
    "STOP_ES": ("deja", "dejen", "dejad", "deje", "para", "paren", "pare", "parad"),
    "REMOVE_ME_ES": (
        "quitenme",
        "quitame",
        "quitadme",
        "sacame",
        "saquenme",
        "eliminame",
        "eliminenme",
        "borrame",
        "borrenme",
    ),
    # it
    "COMM_VERB_IT": ("invi*", "mand*", "scriv*", "contatt*", "chiam*", "disturb*"),
    "REMOVE_ME_IT": (
        "cancellami",
        "cancellatemi",
        "rimuovimi",
        "rimuovetemi",
        "toglimi",
        "toglietemi",
        "eliminami",
        "eliminatemi",
    ),
    # nl
    "STOP_NL": ("stop", "stoppen", "stopt", "hou op", "houd op", "houdt op", "hou eens op"),
    "COMM_VERB_NL": (
        "sturen",
        "versturen",
        "sms*",
        "appen",
        "mailen",
        "contacteren",
        "bellen",
        "benaderen",
        "spammen",
        "berichten",
    ),
    # fi
    "COMM_VERB_FI": ("laheta*", "laita", "soita", "viestita", "tekstaa", "kirjoita", "spammaa"),
    "COMM_VERB_FI_PLURAL": ("lahettako", "laittako", "soittako", "kirjoittako", "spammatko"),
    # pl
    # Imperatives: "nie ma wysyłki" (no shipping) must not match.
    "COMM_VERB_PL": (
        *("wysylaj*", "wysylac", "przysylaj*", "piszcie", "pisz", "pisac", "kontaktuj*"),
        *("dzwon*", "spamuj*"),
    ),
}


@dataclass(frozen=True, slots=True)
class _Phrase:
    language: str
    pattern: str
    # A stop verb that a negation before it turns around ("don't stop texting me" is not a stop).
    negatable: bool = False
    # Reads as an opt-out but not unmistakably ("not interested"): STOP, flagged.
    unsure: bool = False


_PHRASES: tuple[_Phrase, ...] = (
    # en
    _Phrase("en", "@STOP_STRONG_EN ~2 @COMM_ING_EN", negatable=True),
    _Phrase("en", "quit|end|discontinue @COMM_ING_EN", negatable=True),
    _Phrase("en", "@STOP_EN @DET_EN? @DET_EN? @COMM_NOUN", negatable=True),
    _Phrase("en", "@STOP_STRONG_EN @IT_EN", negatable=True),
    _Phrase("en", "@NEG_EN ~1 @COMM_VERB_EN @TO_ME_EN"),
    _Phrase("en", "no more @DET_EN? @COMM_NOUN"),
    _Phrase("en", "no @COMM_NOUN please|pls|plz|thanks|thx|anymore|again|ever"),
    _Phrase("en", "unsub*", negatable=True),
    _Phrase("en", "cancel|end|stop|quit|terminate my|the|this? subscription*", negatable=True),
    _Phrase("en", "opt|opted|opting me|us? out", negatable=True),
    _Phrase("en", "optout|optedout|optingout", negatable=True),
    _Phrase("en", "take|get|put me|us off", negatable=True),
    _Phrase("en", "off @LIST_EN"),
    _Phrase("en", "@REMOVE_EN @MY_NUMBER_EN", negatable=True),
    _Phrase("en", "leave me|us alone"),
    _Phrase("en", "not|dont|don't want ~2 @MSG_NOUN"),
    _Phrase("en", "not interested", unsure=True),
    _Phrase("en", "wrong number|person|phone", unsure=True),
    _Phrase("en", "not my number|phone", unsure=True),
    _Phrase("en", "@NEVER_EN ~1 sign|signed|subscribe*|subscribing|opted|agree*|ask*", unsure=True),
    # nb
    _Phrase("nb", "ikke|ikkje|aldri @COMM_VERB_NB @MORE_NB"),
    _Phrase("nb", "@COMM_VERB_NB meg|oss? ikke|ikkje|aldri ~1 @MORE_NB"),
    _Phrase("nb", "ingen|ikke flere|fler|mer|mere @COMM_NOUN"),
    _Phrase("nb", "slutt|stopp|avslutt å|med ~2 send*|sms*|spam*|mas*|@COMM_NOUN", negatable=True),
    _Phrase("nb", "meld meg|oss? av"),
    _Phrase("nb", "avmeld*", negatable=True),
    _Phrase("nb", "fjern|slett meg|oss|nummeret|nummer|mitt"),
    _Phrase("nb", "vil|ønsker ikke ~2 flere|fler|mer|@MSG_NOUN"),
    # da
    _Phrase("da", "@STOP_DA med ~1 at? @COMM_VERB_DA", negatable=True),
    _Phrase("da", "send|skriv ikke|aldrig ~1 flere|mere|til|mig|@COMM_NOUN"),
    _Phrase("da", "ikke|ingen flere|mere @COMM_NOUN"),
    _Phrase("da", "afmeld*|frameld*", negatable=True),
    _Phrase("da", "fjern|slet mig|mit"),
    _Phrase("da", "vil ikke have ~2 flere|mere|@MSG_NOUN"),
    # sv
    _Phrase("sv", "sluta|slutta ~1 @COMM_VERB_SV", negatable=True),
    _Phrase("sv", "@COMM_VERB_SV mig|oss? inte|ej|aldrig ~1 fler|mer|något|till|mig|@COMM_NOUN"),
    _Phrase("sv", "inga|inte fler|mer @COMM_NOUN"),
    _Phrase("sv", "avregistrera*|avanmäl*", negatable=True),
    _Phrase("sv", "avsluta ~1 prenumeration*", negatable=True),
    _Phrase("sv", "ta bort mig|mitt|mina|oss"),
    _Phrase("sv", "vill inte ha ~2 fler|mer|@MSG_NOUN"),
    # de
    _Phrase("de", "@STOP_DE", negatable=True),
    _Phrase("de", "keine|kein ~1 @COMM_NOUN ~1 mehr"),
    _Phrase("de", "bitte keine|kein ~1 @COMM_NOUN"),
    _Phrase("de", "will|möchte|mochte|wollen keine|kein ~2 @MSG_NOUN"),
    _Phrase("de", "nicht|nie mehr|wieder ~1 @COMM_VERB_DE"),
    _Phrase("de", "@COMM_IMP_DE mir|mich|uns? nicht|nie mehr|wieder"),
    _Phrase("de", "abmeld*|abbestell*|austrag*|austragen", negatable=True),
    _Phrase("de", "trag|tragen|tragt sie? mich|uns aus"),
    _Phrase("de", "lösch*|entfern* sie? mich|meine|meinen|uns"),
    # fr
    _Phrase("fr", "arrête*|stoppez|cessez|cesser", negatable=True),
    _Phrase("fr", "ne|n ~1 @COMM_VERB_FR ~1 plus"),
    _Phrase("fr", "ne|n veux|voulons plus"),
    _Phrase("fr", "plus de @COMM_NOUN"),
    _Phrase("fr", "désabonn*|désinscri*", negatable=True),
    _Phrase("fr", "retirez|supprimez|effacez|enlevez moi|mon|ma|mes|nous"),
    # es
    _Phrase("es", "no|nunca ~2 @COMM_VERB_ES ~2 más|nada"),
    _Phrase("es", "ya no ~1 @COMM_VERB_ES"),
    _Phrase("es", "no más @COMM_NOUN"),
    _Phrase("es", "no quiero ~2 más|recibir|@MSG_NOUN"),
    _Phrase("es", "@STOP_ES de ~1 @COMM_VERB_ES", negatable=True),
    _Phrase("es", "de baja"),
    _Phrase("es", "@REMOVE_ME_ES", negatable=True),
    _Phrase("es", "borr*|elimin* mi ~1 número|teléfono|contacto|datos"),
    # it
    _Phrase("it", "basta ~1 @COMM_NOUN"),
    _Phrase("it", "smett*", negatable=True),
    _Phrase("it", "non ~2 @COMM_VERB_IT ~2 più"),
    _Phrase("it", "non voglio ~2 più|ricevere|@MSG_NOUN"),
    _Phrase("it", "niente|nessun* più? @COMM_NOUN"),
    _Phrase("it", "@REMOVE_ME_IT", negatable=True),
    _Phrase("it", "disiscriv*|disiscrizione", negatable=True),
    # nl
    _Phrase("nl", "@STOP_NL met ~2 @COMM_VERB_NL", negatable=True),
    _Phrase("nl", "hou|houd|houdt op $", negatable=True),
    _Phrase("nl", "geen ~1 @COMM_NOUN ~1 meer"),
    _Phrase("nl", "stuur* ~2 niet|niets|niks|geen ~1 meer"),
    _Phrase("nl", "niet meer ~1 @COMM_VERB_NL"),
    _Phrase("nl", "afmeld*|uitschrijv*", negatable=True),
    _Phrase("nl", "meld|schrijf me|mij|ons af|uit"),
    _Phrase("nl", "haal me|mij|ons van|uit"),
    _Phrase("nl", "verwijder* me|mij|ons|mijn"),
    _Phrase("nl", "wil|willen geen ~2 meer|@MSG_NOUN"),
    # fi
    _Phrase("fi", "lopet*", negatable=True),
    _Phrase("fi", "älä @COMM_VERB_FI"),
    _Phrase("fi", "älkää @COMM_VERB_FI_PLURAL"),
    _Phrase("fi", "ei enää ~1 @COMM_NOUN"),
    _Phrase("fi", "en halua ~2 enää|@MSG_NOUN"),
    _Phrase("fi", "poista* minut|numero*", negatable=True),
    _Phrase("fi", "peru* ~1 tilau*", unsure=True),
    # pl
    _Phrase("pl", "przesta*", negatable=True),
    _Phrase("pl", "nie ~1 @COMM_VERB_PL"),
    _Phrase("pl", "wypis*", negatable=True),
    _Phrase("pl", "usuń* ~1 mój|moj|mnie|numer*", negatable=True),
    _Phrase("pl", "nie chcę ~2 więcej|@MSG_NOUN"),
    _Phrase("pl", "rezygnuj*", unsure=True),
)


def _alternative_regex(alternative: str) -> str:
    prefix = alternative.endswith("*")
    words = _phrase(alternative.rstrip("*"))
    regex = " ".join(re.escape(word) for word in words)
    return regex + r"[^ |]*" if prefix else regex


def _element_regex(element: str) -> str:
    optional = element.endswith("?") and len(element) > 1
    element = element.removesuffix("?") if optional else element
    if element == "$":
        return r"(?=\| |$)"
    if element.startswith("~"):
        return rf"(?:[^ |]+ ){{0,{int(element[1:])}}}"
    alternatives = _CLASSES[element[1:]] if element.startswith("@") else element.split("|")
    group = "(?:" + "|".join(_alternative_regex(alt) for alt in alternatives) + ") "
    return f"(?:{group})?" if optional else group


def _compile(pattern: str) -> re.Pattern[str]:
    # A lookbehind, not a consumed space, so that matches may sit right next to each other.
    return re.compile("(?<= )" + "".join(_element_regex(element) for element in pattern.split()))


_COMPILED: tuple[tuple[_Phrase, re.Pattern[str]], ...] = tuple(
    (phrase, _compile(phrase.pattern)) for phrase in _PHRASES
)
_MSG_NOUN_WORD = re.compile(
    "(?:" + "|".join(_alternative_regex(alt) for alt in _CLASSES["MSG_NOUN"]) + ")"
)

# Negations that turn a stop verb around, per language; words shared by many apply to all.
_NEGATIONS: dict[str, frozenset[str]] = {
    "en": frozenset({"dont", "dnt", "never", "not"}),
    "de": frozenset({"nicht", "nie", "niemals"}),
    "fr": frozenset({"ne", "n", "pas", "jamais"}),
    "es": frozenset({"no", "nunca", "jamas"}),
    "it": frozenset({"non", "mai"}),
    "nl": frozenset({"niet", "nooit"}),
    "nb": frozenset({"ikke", "ikkje", "aldri"}),
    "da": frozenset({"ikke", "aldrig"}),
    "sv": frozenset({"inte", "ej", "aldrig"}),
    "fi": frozenset({"ala", "alkaa", "ei", "en"}),
    "pl": frozenset({"nie"}),
}
# "no" (English "no, stop"), "en" and "ei" are too common outside their language to share.
_SHARED_NEGATIONS = frozenset().union(
    *(words for language, words in _NEGATIONS.items() if language not in {"es", "fi"})
)
# Negations that follow the verb: "stopp ikke", "sluta inte", "stop niet", "hör nicht auf".
_POST_NEGATIONS = frozenset({"ikke", "ikkje", "inte", "ej", "niet", "nicht", "pas"})
# Rhetorical "why don't you stop …" asks for a stop.
_RHETORICAL = frozenset({"you", "u", "ya"})
_NEGATION_WINDOW = 3

# In a long message, a STOP-family word followed by one of these reads as aimed at us.
_AIMED_AT_US = frozenset(
    _words(
        tokenize(
            "me us it this that these those them all everything now texting messaging sending "
            "contacting emailing calling spamming subscription subscriptions list number "
            "please pls plz"
        )
    )
)
_SHORT_MESSAGE_WORDS = 6

_STOP_EMOJI = frozenset("🛑⛔🚫✋")
_EMOJI_NOISE = frozenset("\ufe0f\ufe0e\u200d ")

# "No thanks" declines the offer; it is not read as a revocation, but a person should look.
_DECLINES = frozenset({"no", "nope", "nah", "not", "nei", "nej", "nein", "non", "nee", "ei", "nie"})

_HELP_QUESTIONS = tuple(
    _compile(pattern)
    for pattern in ("who is|s this|that", "who are you|u", "what is|s this", "whos this")
)


# ---------------------------------------------------------------------------------------------
# Classification


def _classification(
    kind: ReplyKind, words: Sequence[str] | None, confident: bool, language: str | None, reason: str
) -> ReplyClassification:
    keyword = " ".join(words).upper() if words else None
    return ReplyClassification(kind, keyword, confident, language, reason)


def _extra_keywords(extra_stop_words: Collection[str]) -> dict[tuple[str, ...], _Keyword]:
    if isinstance(extra_stop_words, str):
        raise ValueError("extra_stop_words must be a collection of words, not a single string")
    extras: dict[tuple[str, ...], _Keyword] = {}
    for word in extra_stop_words:
        if not isinstance(word, str):
            raise ValueError(f"extra stop word must be a string, got {word!r}")
        extras[_phrase(word)] = _Keyword(ReplyKind.STOP, None)
    return extras


def _keyword_runs(
    words: Sequence[str], keywords: Mapping[tuple[str, ...], _Keyword]
) -> list[tuple[tuple[str, ...], _Keyword]] | None:
    """The message read as keywords and filler only; None when some word is neither."""
    found: list[tuple[tuple[str, ...], _Keyword]] = []
    index = 0
    while index < len(words):
        for size in range(min(_LONGEST_KEYWORD, len(words) - index), 0, -1):
            candidate = tuple(words[index : index + size])
            if candidate in keywords:
                found.append((candidate, keywords[candidate]))
                index += size
                break
        else:
            if words[index] not in _FILLER:
                return None
            index += 1
    return found


def _spelled_out(words: Sequence[str]) -> list[str]:
    """S.T.O.P or "s t o p" → ["stop"]."""
    if len(words) > 1 and all(len(word) == 1 for word in words):
        return ["".join(words)]
    return list(words)


def _only_keywords(
    words: Sequence[str], keywords: Mapping[tuple[str, ...], _Keyword]
) -> ReplyClassification | None:
    runs = _keyword_runs(_spelled_out(words), keywords)
    if not runs:
        return None
    kinds = {keyword.kind for _, keyword in runs}
    first_phrase, first = runs[0]
    if kinds == {first.kind}:
        return _classification(
            first.kind, first_phrase, True, first.language, f"{first.kind.value.upper()} keyword"
        )
    stop = next((run for run in runs if run[1].kind is ReplyKind.STOP), None)
    if stop is not None:
        return _classification(
            ReplyKind.STOP,
            stop[0],
            False,
            stop[1].language,
            "STOP mixed with other keywords: the opt-out wins, flagged for review",
        )
    help_run = next(run for run in runs if run[1].kind is ReplyKind.HELP)
    return _classification(
        ReplyKind.HELP,
        help_run[0],
        False,
        help_run[1].language,
        "HELP mixed with START: answered with help, not re-subscribed",
    )


def _negated(tokens: Sequence[str], start: int, end: int, language: str | None) -> bool:
    """Is the stop verb at tokens[start:end] negated within its clause?"""
    negations = _SHARED_NEGATIONS | _NEGATIONS.get(language or "", frozenset())
    before: list[str] = []
    for index in range(start - 1, -1, -1):
        if tokens[index] == _BREAK or len(before) == _NEGATION_WINDOW:
            break
        before.insert(0, tokens[index])
    for offset, word in enumerate(before):
        following = before[offset + 1] if offset + 1 < len(before) else None
        if word in negations and following not in _RHETORICAL:
            return True
    return end < len(tokens) and tokens[end] in _POST_NEGATIONS


def _token_starts(tokens: Sequence[str]) -> list[int]:
    """Where each token starts in " " + " ".join(tokens) + " "."""
    starts, position = [], 1
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    return starts


def _token_span(starts: Sequence[int], match: re.Match[str]) -> tuple[int, int]:
    """Token indices [start, end) of a match over the framed, space-joined tokens."""
    start = bisect.bisect_left(starts, match.start())
    return start, start + len(match.group().split())


@dataclass(frozen=True, slots=True)
class _PhraseFindings:
    confident: ReplyClassification | None = None
    unsure: ReplyClassification | None = None
    negated: str | None = None


def _find_phrases(tokens: Sequence[str]) -> _PhraseFindings:
    text = " " + " ".join(tokens) + " "
    starts = _token_starts(tokens)
    unsure: ReplyClassification | None = None
    negated: str | None = None
    for phrase, regex in _COMPILED:
        for match in regex.finditer(text):
            start, end = _token_span(starts, match)
            words = tokens[start:end]
            if phrase.negatable and _negated(tokens, start, end, phrase.language):
                negated = negated or " ".join(words)
                continue
            if not phrase.unsure:
                reason = f"opt-out phrase ({phrase.language})"
                return _PhraseFindings(
                    _classification(ReplyKind.STOP, words, True, phrase.language, reason)
                )
            if unsure is None:
                reason = f"reads as an opt-out ({phrase.language}); when unsure, opt out and flag"
                unsure = _classification(ReplyKind.STOP, words, False, phrase.language, reason)
    return _PhraseFindings(None, unsure, negated)


def _clauses(tokens: Sequence[str]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    for index, token in enumerate([*tokens, _BREAK]):
        if token == _BREAK:
            spans.append((start, index))
            start = index + 1
    return spans


@dataclass(frozen=True, slots=True)
class _Occurrence:
    start: int
    end: int
    phrase: tuple[str, ...]
    keyword: _Keyword


def _occurrences(
    tokens: Sequence[str], keywords: Mapping[tuple[str, ...], _Keyword], kind: ReplyKind
) -> list[_Occurrence]:
    found = []
    for index in range(len(tokens)):
        for size in range(_LONGEST_KEYWORD, 0, -1):
            phrase = tuple(tokens[index : index + size])
            keyword = keywords.get(phrase)
            if keyword and keyword.kind is kind and not keyword.exact_only:
                found.append(_Occurrence(index, index + size, phrase, keyword))
                break
    return found


def _aimed_at_us(tokens: Sequence[str], end: int) -> bool:
    following: list[str] = []
    for token in tokens[end : end + 2]:
        if token == _BREAK:
            break
        following.append(token)
    return not following or any(
        word in _AIMED_AT_US or _MSG_NOUN_WORD.fullmatch(word) for word in following
    )


def _standalone_stop(
    tokens: Sequence[str], keywords: Mapping[tuple[str, ...], _Keyword]
) -> tuple[ReplyClassification | None, str | None]:
    """A STOP-family word inside other text: (classification, negated words if all negated)."""
    word_count = len(_words(tokens))
    clause_of = {index: span for span in _clauses(tokens) for index in range(*span)}
    keyword_only: dict[tuple[int, int], bool] = {}
    negated: str | None = None
    ordinary: ReplyClassification | None = None
    for occurrence in _occurrences(tokens, keywords, ReplyKind.STOP):
        words, language = occurrence.phrase, occurrence.keyword.language
        if _negated(tokens, occurrence.start, occurrence.end, language):
            negated = negated or " ".join(tokens[max(0, occurrence.start - 2) : occurrence.end])
            continue
        clause = clause_of[occurrence.start]
        if clause not in keyword_only:
            keyword_only[clause] = bool(_keyword_runs(tokens[clause[0] : clause[1]], keywords))
        if keyword_only[clause]:
            reason = "a sentence of its own that is only a STOP keyword"
            return _classification(ReplyKind.STOP, words, True, language, reason), None
        if word_count <= _SHORT_MESSAGE_WORDS:
            reason = (
                f"STOP word in a short message (≤{_SHORT_MESSAGE_WORDS} words); "
                "when unsure, opt out and flag"
            )
            return _classification(ReplyKind.STOP, words, False, language, reason), None
        if _aimed_at_us(tokens, occurrence.end):
            reason = "STOP word aimed at us or at the end of a sentence in a longer message"
            return _classification(ReplyKind.STOP, words, False, language, reason), None
        if ordinary is None:
            reason = "STOP word used as an ordinary verb with another object; flagged for review"
            ordinary = _classification(ReplyKind.OTHER, words, False, language, reason)
    return ordinary, negated


def _stop_emoji_only(text: str) -> bool:
    remaining = set(text) - _EMOJI_NOISE - set(" \t\r\n")
    return bool(remaining) and remaining <= _STOP_EMOJI


def _help_or_start(
    tokens: Sequence[str], keywords: Mapping[tuple[str, ...], _Keyword]
) -> ReplyClassification | None:
    helps = _occurrences(tokens, keywords, ReplyKind.HELP)
    if helps:
        first = helps[0]
        reason = "HELP word inside other text: answer with help, flagged"
        return _classification(ReplyKind.HELP, first.phrase, False, first.keyword.language, reason)
    text = " " + " ".join(tokens) + " "
    for regex in _HELP_QUESTIONS:
        match = regex.search(text)
        if match:
            reason = "asks who is texting: answer with help, flagged"
            return _classification(ReplyKind.HELP, match.group().split(), False, "en", reason)
    starts = _occurrences(tokens, keywords, ReplyKind.START)
    if starts:
        first = starts[0]
        reason = "START word inside other text: re-subscribing needs the keyword on its own"
        return _classification(ReplyKind.OTHER, first.phrase, False, first.keyword.language, reason)
    return None


def classify_reply(text: str, *, extra_stop_words: Collection[str] = ()) -> ReplyClassification:
    """Classify an inbound SMS. `extra_stop_words` adds store-specific opt-out words."""
    if not isinstance(text, str):
        raise ValueError(f"reply text must be a string, got {type(text).__name__}")
    keywords = {**_KEYWORDS, **_extra_keywords(extra_stop_words)}
    if _stop_emoji_only(text):
        reason = "only a stop-sign emoji: read as an opt-out, flagged"
        return ReplyClassification(ReplyKind.STOP, None, False, None, reason)
    tokens = tokenize(text)
    words = _words(tokens)
    if not words:
        return ReplyClassification(ReplyKind.OTHER, None, True, None, "no words in the message")
    exact = _only_keywords(words, keywords)
    if exact is not None:
        return exact
    phrases = _find_phrases(tokens)
    if phrases.confident is not None:
        return phrases.confident
    standalone, negated_word = _standalone_stop(tokens, keywords)
    if standalone is not None and standalone.kind is ReplyKind.STOP and standalone.confident:
        return standalone
    if phrases.unsure is not None:
        return phrases.unsure
    if standalone is not None:
        return standalone
    negated = phrases.negated or negated_word
    if negated is not None:
        reason = f"negated stop ({negated!r}) is not an opt-out; flagged for review"
        return _classification(ReplyKind.OTHER, None, False, None, reason)
    help_or_start = _help_or_start(tokens, keywords)
    if help_or_start is not None:
        return help_or_start
    meaningful = {word for word in words if word not in _FILLER}
    if meaningful and meaningful <= _DECLINES:
        reason = "declines the offer ('no thanks'): not read as an opt-out; flagged for review"
        return ReplyClassification(ReplyKind.OTHER, None, False, None, reason)
    return ReplyClassification(
        ReplyKind.OTHER, None, True, None, "no opt-out, opt-in or help wording"
    )
