"""Per-language wording of the texts cartback guarantees: opt-out footer, HELP reply, opt-out and
opt-in confirmations, discount and unsubscribe lines.

SMS wording is GSM-7 only (no ê, ó, ą...), so that a compliance text never forces UCS-2 and
doubles the cost of a message; that is why the Polish texts use forms such as
"Rezygnacja: odpowiedz STOP". Keywords stay STOP/START/HELP everywhere because carriers and
providers act on them; Norwegian and Swedish use STOPP, which both also accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import babel.languages

DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True, slots=True)
class LocaleTexts:
    # Appended to a marketing SMS that does not already carry one of `stop_words`.
    opt_out_footer: str
    # Upper-case keywords that, present as words, show the message already explains opting out.
    stop_words: tuple[str, ...]
    # "{contact}" is the store's support contact; omitted when the store has none.
    help_contact: str
    help_body: str
    opt_out_confirmation: str  # "{brand}"
    opt_in_confirmation: str  # "{brand}"
    discount: str  # "{value}" is "10 %" or "€5.00"
    unsubscribe_line: str  # "{url}", email footer
    # Stands in for a product name that cannot fit an SMS; reads as the object of a sentence.
    product_fallback: str


LOCALE_TEXTS: dict[str, LocaleTexts] = {
    "en": LocaleTexts(
        opt_out_footer="Reply STOP to opt out",
        stop_words=("STOP",),
        help_contact="Help at {contact}. ",
        help_body="Msg freq varies. Msg & data rates may apply. Reply STOP to opt out.",
        opt_out_confirmation=(
            "You're unsubscribed from {brand} texts. No more messages will be sent. "
            "Reply START to resubscribe."
        ),
        opt_in_confirmation=(
            "{brand}: You're subscribed to texts incl. cart reminders. Msg freq varies. "
            "Msg & data rates may apply. Reply HELP for help, STOP to opt out."
        ),
        discount="{value} off",
        unsubscribe_line="Unsubscribe: {url}",
        product_fallback="your items",
    ),
    "nb": LocaleTexts(
        opt_out_footer="Svar STOPP for å melde deg av",
        stop_words=("STOPP", "STOP"),
        help_contact="Hjelp: {contact}. ",
        help_body=(
            "Antall meldinger varierer. Vanlige SMS-priser gjelder. Svar STOPP for å melde deg av."
        ),
        opt_out_confirmation=(
            "Du er meldt av SMS fra {brand}. Du får ingen flere meldinger. "
            "Svar START for å melde deg på igjen."
        ),
        opt_in_confirmation=(
            "{brand}: Du er påmeldt SMS, også om handlekurven din. Antall meldinger varierer. "
            "Vanlige SMS-priser gjelder. Svar HELP for hjelp, STOPP for å melde deg av."
        ),
        discount="{value} rabatt",
        unsubscribe_line="Meld deg av: {url}",
        product_fallback="varene dine",
    ),
    "da": LocaleTexts(
        opt_out_footer="Svar STOP for at afmelde",
        stop_words=("STOP",),
        help_contact="Hjælp: {contact}. ",
        help_body="Antal beskeder varierer. Normal SMS-takst. Svar STOP for at afmelde.",
        opt_out_confirmation=(
            "Du er afmeldt SMS fra {brand}. Du modtager ikke flere beskeder. "
            "Svar START for at tilmelde dig igen."
        ),
        opt_in_confirmation=(
            "{brand}: Du er tilmeldt SMS, også om din indkøbskurv. Antal beskeder varierer. "
            "Normal SMS-takst. Svar HELP for hjælp, STOP for at afmelde."
        ),
        discount="{value} rabat",
        unsubscribe_line="Afmeld: {url}",
        product_fallback="dine varer",
    ),
    "sv": LocaleTexts(
        opt_out_footer="Svara STOPP för att avregistrera dig",
        stop_words=("STOPP", "STOP"),
        help_contact="Hjälp: {contact}. ",
        help_body=(
            "Antal meddelanden varierar. Ordinarie SMS-avgifter kan tillkomma. "
            "Svara STOPP för att avregistrera dig."
        ),
        opt_out_confirmation=(
            "Du får inte längre SMS från {brand}. Inga fler meddelanden skickas. "
            "Svara START för att prenumerera igen."
        ),
        opt_in_confirmation=(
            "{brand}: Du prenumererar nu på SMS, även om din varukorg. "
            "Antal meddelanden varierar. Ordinarie SMS-avgifter kan tillkomma. "
            "Svara HELP för hjälp, STOPP för att avregistrera dig."
        ),
        discount="{value} rabatt",
        unsubscribe_line="Avregistrera: {url}",
        product_fallback="dina varor",
    ),
    "de": LocaleTexts(
        opt_out_footer="Zum Abmelden STOP antworten",
        stop_words=("STOP",),
        help_contact="Hilfe: {contact}. ",
        help_body=(
            "Nachrichtenanzahl variiert. Es können SMS-Gebühren anfallen. "
            "Zum Abmelden STOP antworten."
        ),
        opt_out_confirmation=(
            "Sie sind von den SMS von {brand} abgemeldet und erhalten keine weiteren "
            "Nachrichten. Zum erneuten Anmelden START antworten."
        ),
        opt_in_confirmation=(
            "{brand}: Sie erhalten nun SMS, auch zu Ihrem Warenkorb. Nachrichtenanzahl variiert. "
            "Es können SMS-Gebühren anfallen. Hilfe: HELP, Abmelden: STOP antworten."
        ),
        discount="{value} Rabatt",
        unsubscribe_line="Abmelden: {url}",
        product_fallback="Ihre Artikel",
    ),
    "fr": LocaleTexts(
        opt_out_footer="Répondez STOP pour vous désabonner",
        stop_words=("STOP",),
        help_contact="Aide : {contact}. ",
        help_body=("Fréquence variable. Tarif SMS standard. Répondez STOP pour vous désabonner."),
        opt_out_confirmation=(
            "Votre désabonnement des SMS de {brand} est confirmé. Vous ne recevrez plus de "
            "messages. Répondez START pour vous réabonner."
        ),
        opt_in_confirmation=(
            "{brand}: Votre abonnement aux SMS, y compris les rappels de panier, est confirmé. "
            "Fréquence variable. Tarif SMS standard. Répondez HELP pour de l'aide, "
            "STOP pour vous désabonner."
        ),
        discount="{value} de réduction",
        unsubscribe_line="Se désabonner : {url}",
        product_fallback="vos articles",
    ),
    "es": LocaleTexts(
        opt_out_footer="Responde STOP para darte de baja",
        stop_words=("STOP",),
        help_contact="Ayuda: {contact}. ",
        help_body=(
            "Frecuencia variable. Pueden aplicarse tarifas de SMS. "
            "Responde STOP para darte de baja."
        ),
        opt_out_confirmation=(
            "Te has dado de baja de los SMS de {brand}. Ya no te enviaremos mensajes. "
            "Responde START para volver a suscribirte."
        ),
        opt_in_confirmation=(
            "{brand}: Te has suscrito a nuestros SMS, incluidos recordatorios de carrito. "
            "Frecuencia variable. Pueden aplicarse tarifas de SMS. "
            "Responde HELP para ayuda, STOP para darte de baja."
        ),
        discount="{value} de descuento",
        unsubscribe_line="Darse de baja: {url}",
        product_fallback="tus productos",
    ),
    "it": LocaleTexts(
        opt_out_footer="Rispondi STOP per annullare l'iscrizione",
        stop_words=("STOP",),
        help_contact="Assistenza: {contact}. ",
        help_body=(
            "Frequenza variabile. Possono essere applicati costi SMS. "
            "Rispondi STOP per annullare l'iscrizione."
        ),
        opt_out_confirmation=(
            "Hai annullato l'iscrizione agli SMS di {brand}. Non riceverai altri messaggi. "
            "Rispondi START per iscriverti di nuovo."
        ),
        opt_in_confirmation=(
            "{brand}: Ti sei iscritto agli SMS, inclusi i promemoria del carrello. "
            "Frequenza variabile. Possono essere applicati costi SMS. "
            "Rispondi HELP per assistenza, STOP per annullare l'iscrizione."
        ),
        discount="{value} di sconto",
        unsubscribe_line="Annulla iscrizione: {url}",
        product_fallback="i tuoi articoli",
    ),
    "nl": LocaleTexts(
        opt_out_footer="Antwoord STOP om je af te melden",
        stop_words=("STOP",),
        help_contact="Hulp: {contact}. ",
        help_body=(
            "Aantal berichten varieert. Standaard sms-kosten kunnen van toepassing zijn. "
            "Antwoord STOP om je af te melden."
        ),
        opt_out_confirmation=(
            "Je bent afgemeld voor sms'jes van {brand}. Je ontvangt geen berichten meer. "
            "Antwoord START om je opnieuw aan te melden."
        ),
        opt_in_confirmation=(
            "{brand}: Je bent aangemeld voor sms'jes, ook over je winkelwagen. "
            "Aantal berichten varieert. Standaard sms-kosten kunnen van toepassing zijn. "
            "Antwoord HELP voor hulp, STOP om je af te melden."
        ),
        discount="{value} korting",
        unsubscribe_line="Afmelden: {url}",
        product_fallback="je artikelen",
    ),
    "fi": LocaleTexts(
        opt_out_footer="Vastaa STOP peruaksesi tilauksen",
        stop_words=("STOP",),
        help_contact="Tuki: {contact}. ",
        help_body=(
            "Viestien määrä vaihtelee. Normaalit viestimaksut. Vastaa STOP peruaksesi tilauksen."
        ),
        opt_out_confirmation=(
            "Tilauksesi {brand}-tekstiviesteihin on peruttu. Emme lähetä enää viestejä. "
            "Vastaa START tilataksesi uudelleen."
        ),
        opt_in_confirmation=(
            "{brand}: Olet tilannut tekstiviestit, myös ostoskorimuistutukset. "
            "Viestien määrä vaihtelee. Normaalit viestimaksut. "
            "Vastaa HELP saadaksesi apua, STOP peruaksesi tilauksen."
        ),
        discount="{value} alennus",
        unsubscribe_line="Peru tilaus: {url}",
        product_fallback="tuotteesi",
    ),
    "pl": LocaleTexts(
        opt_out_footer="Rezygnacja: odpowiedz STOP",
        stop_words=("STOP",),
        help_contact="Pomoc: {contact}. ",
        help_body=(
            "Liczba SMS zmienna. Koszt SMS wg taryfy operatora. Rezygnacja: odpowiedz STOP."
        ),
        opt_out_confirmation=(
            "Wypisano numer z listy SMS {brand}. Nie otrzymasz kolejnych SMS. "
            "Ponowny zapis: odpowiedz START."
        ),
        opt_in_confirmation=(
            "{brand}: Subskrypcja SMS aktywna, w tym przypomnienia o koszyku. "
            "Liczba SMS zmienna. Koszt SMS wg taryfy operatora. "
            "Pomoc: odpowiedz HELP. Rezygnacja: odpowiedz STOP."
        ),
        discount="{value} rabatu",
        unsubscribe_line="Wypisz się: {url}",
        product_fallback="Twoje produkty",
    ),
}

# Languages whose texts are shared with another entry: Norwegian ("no") and Nynorsk read the
# Bokmål wording without trouble.
LANGUAGE_ALIASES: dict[str, str] = {"no": "nb", "nn": "nb"}


def language_of(locale: str | None) -> str:
    """The lower-case language subtag of a locale tag ("nb-NO", "pt_BR", "de"); "" when none."""
    if not locale:
        return ""
    language = locale.strip().replace("_", "-").split("-", 1)[0].lower()
    return LANGUAGE_ALIASES.get(language, language)


def texts_for(locale: str | None) -> LocaleTexts:
    """The wording for a locale, by its language; English for unknown or malformed locales."""
    return LOCALE_TEXTS.get(language_of(locale), LOCALE_TEXTS[DEFAULT_LANGUAGE])


def _tag(locale: str) -> str:
    return locale.strip().replace("_", "-").lower()


def matches(locale: str, offered: str) -> bool:
    """True when `offered` (a locale a flow has text for) serves a shopper with `locale`: the
    same tag ("nb-NO"), or `offered` is the shopper's language ("nb" serves "nb-NO" and "no")."""
    wanted, key = _tag(locale), _tag(offered)
    if not key:
        return False
    return wanted == key or ("-" not in key and language_of(locale) == language_of(key))


def country_languages(country: str | None) -> tuple[str, ...]:
    """The languages of a country (ISO 3166 alpha-2), most spoken first, from the CLDR data
    babel ships: ("fi", "sv") for FI, ("nb", "nn") for NO; () for an unknown code."""
    code = (country or "").strip().upper()
    if len(code) != 2 or not code.isalpha():
        return ()
    found: list[str] = []
    for language in babel.languages.get_official_languages(code, de_facto=True):
        language = language_of(language)
        if language not in found:
            found.append(language)
    return tuple(found)


def pick_locale(
    offered: Sequence[str],
    *,
    checkout_locale: str | None,
    country: str | None,
    store_default: str,
) -> str:
    """The locale to write to a shopper in, among those `offered`: the checkout's locale, then
    a language of the shipping country, then the store's default, then `offered[0]` (the
    language of the text that has no locale of its own)."""
    if not offered:
        raise ValueError("pick_locale needs at least one offered locale")
    wanted = (checkout_locale or "").strip()
    if wanted and any(matches(wanted, key) for key in offered):
        return wanted
    code = (country or "").strip().upper()
    for language in country_languages(code):
        if any(matches(language, key) for key in offered):
            # With the country, so that money is written the local way (nb-NO: "1 200,00 kr").
            return f"{language}-{code}"
    if any(matches(store_default, key) for key in offered):
        return store_default
    return offered[0]
