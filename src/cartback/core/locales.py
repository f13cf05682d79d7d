"""Per-language wording of the texts cartback guarantees: opt-out footer, HELP reply, opt-out and
opt-in confirmations, discount and unsubscribe lines.

SMS wording is GSM-7 only (no ê, ó, ą...), so that a compliance text never forces UCS-2 and
doubles the cost of a message; that is why the Polish texts use forms such as
"Rezygnacja: odpowiedz STOP". Keywords stay STOP/START/HELP everywhere because carriers and
providers act on them; Norwegian and Swedish use STOPP, which both also accept.
"""

from __future__ import annotations

from dataclasses import dataclass

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
