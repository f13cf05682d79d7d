<?php
/**
 * Plugin Name:          cartback capture
 * Description:          Sends the checkout a shopper leaves to cartback's event API (POST /v1/events), so cartback can remind them, and names the cart on the order so the reminders stop when they buy.
 * Version:              1.0.0
 * Requires PHP:         7.4
 * WC requires at least: 7.0
 * License:              Apache-2.0
 *
 * Configure it in wp-config.php:
 *
 *     define( 'CARTBACK_URL', 'https://cartback.example.com' );
 *     define( 'CARTBACK_API_KEY', 'cbk_...' );  // cartback store key STORE
 *     // Optional: the words beside the reminder box, stored with the shopper's consent.
 *     define( 'CARTBACK_CONSENT_TEXT', 'Text me a reminder if I leave items in my cart. Msg & data rates may apply. Reply STOP to opt out.' );
 *
 * The key stays on the server: the browser never sees it. Requests are sent without waiting
 * for the answer, so a slow or unreachable cartback never slows the checkout.
 */

defined( 'ABSPATH' ) || exit;

// The order meta key cartback's WooCommerce order webhook reads the cart token from.
const CARTBACK_ORDER_META = '_cartback_cart_token';
const CARTBACK_CONSENT_FIELD = 'cartback_sms_consent';
const CARTBACK_KEEP_CART_DAYS = 30;

/** The checkout box a shopper ticks to be reminded by SMS (never ticked in advance). */
function cartback_consent_text() {
	return defined( 'CARTBACK_CONSENT_TEXT' )
		? CARTBACK_CONSENT_TEXT
		: __( 'Text me a reminder if I leave items in my cart. Reply STOP to opt out.', 'cartback' );
}

add_action(
	'woocommerce_after_checkout_billing_form',
	function () {
		woocommerce_form_field(
			CARTBACK_CONSENT_FIELD,
			array(
				'type'  => 'checkbox',
				'class' => array( 'form-row-wide', 'update_totals_on_change' ),
				'label' => esc_html( cartback_consent_text() ),
			),
			0
		);
	}
);

/** This session's cart token: made once, then the same until the order is placed. */
function cartback_cart_token() {
	$token = WC()->session->get( 'cartback_cart_token' );
	if ( ! $token ) {
		$token = 'wc-' . wp_generate_uuid4();
		WC()->session->set( 'cartback_cart_token', $token );
	}
	return $token;
}

/**
 * The checkout.updated event for the session's cart and the checkout form's fields, or null
 * when there is nothing to send (an empty cart, or neither an email nor a phone yet).
 */
function cartback_event( array $fields ) {
	$cart = WC()->cart;
	if ( ! $cart || $cart->is_empty() ) {
		return null;
	}
	$token    = cartback_cart_token();
	$decimals = wc_get_price_decimals();
	$lines    = array();
	$kept     = array();
	foreach ( $cart->get_cart() as $item ) {
		$product = $item['data'];
		$lines[] = array_filter(
			array(
				'title'      => mb_substr( wp_strip_all_tags( $product->get_name() ), 0, 300 ),
				'quantity'   => (int) $item['quantity'],
				'price'      => wc_format_decimal( wc_get_price_including_tax( $product ), $decimals ),
				'sku'        => mb_substr( (string) $product->get_sku(), 0, 200 ),
				'product_id' => (string) $item['product_id'],
			),
			'cartback_present'
		);
		$kept[] = array( $item['product_id'], $item['quantity'], $item['variation_id'], $item['variation'] );
	}
	$contact = array_filter(
		array(
			'email'      => sanitize_email( $fields['billing_email'] ?? '' ),
			'phone'      => wc_sanitize_phone_number( $fields['billing_phone'] ?? '' ),
			'first_name' => mb_substr( sanitize_text_field( $fields['billing_first_name'] ?? '' ), 0, 100 ),
			'last_name'  => mb_substr( sanitize_text_field( $fields['billing_last_name'] ?? '' ), 0, 100 ),
			'locale'     => str_replace( '_', '-', get_locale() ),
		),
		'cartback_present'
	);
	if ( empty( $contact['email'] ) && empty( $contact['phone'] ) ) {
		return null;
	}
	// What the restore link puts back in the cart.
	set_transient( 'cartback_cart_' . $token, $kept, CARTBACK_KEEP_CART_DAYS * DAY_IN_SECONDS );
	$reminders = ! empty( $fields[ CARTBACK_CONSENT_FIELD ] );
	$content   = array(
		'cart_token'  => $token,
		'contact'     => $contact,
		'shipping'    => array_filter( array( 'country' => sanitize_text_field( $fields['billing_country'] ?? '' ) ), 'cartback_present' ),
		'lines'       => $lines,
		'value'       => wc_format_decimal( $cart->get_total( 'edit' ), $decimals ),
		'currency'    => get_woocommerce_currency(),
		'restore_url' => add_query_arg( 'cartback_restore', rawurlencode( $token ), wc_get_cart_url() ),
		'consent'     => array(
			'sms_marketing'  => $reminders,
			'cart_reminders' => $reminders,
			'wording'        => cartback_consent_text(),
			'ip'             => WC_Geolocation::get_ip_address(),
			'user_agent'     => mb_substr( wc_get_user_agent(), 0, 400 ),
		),
	);
	// The same cart and form twice is one event: a repeat is acknowledged as a duplicate.
	$event = array(
		'id'          => $token . ':' . substr( md5( wp_json_encode( $content ) ), 0, 16 ),
		'type'        => 'checkout.updated',
		'occurred_at' => gmdate( 'Y-m-d\TH:i:s+00:00' ),
	);
	return array_merge( $event, $content );
}

function cartback_present( $value ) {
	return '' !== $value && null !== $value;
}

function cartback_send( array $event ) {
	if ( ! defined( 'CARTBACK_URL' ) || ! defined( 'CARTBACK_API_KEY' ) ) {
		return;
	}
	wp_remote_post(
		rtrim( CARTBACK_URL, '/' ) . '/v1/events',
		array(
			'timeout'  => 3,
			'blocking' => false,
			'headers'  => array(
				'Authorization' => 'Bearer ' . CARTBACK_API_KEY,
				'Content-Type'  => 'application/json',
			),
			'body'     => wp_json_encode( $event ),
		)
	);
}

// WooCommerce refreshes the order review as the form changes; each refresh sends the cart.
add_action(
	'woocommerce_checkout_update_order_review',
	function ( $posted ) {
		parse_str( (string) $posted, $fields );
		$event = cartback_event( $fields );
		if ( null !== $event ) {
			cartback_send( $event );
		}
	}
);

// The email and phone fields do not refresh the order review by themselves.
add_action(
	'wp_enqueue_scripts',
	function () {
		if ( function_exists( 'is_checkout' ) && is_checkout() ) {
			wp_add_inline_script(
				'wc-checkout',
				"jQuery( function ( $ ) { $( 'form.checkout' ).on( 'change', '#billing_email, #billing_phone', function () { $( document.body ).trigger( 'update_checkout' ); } ); } );"
			);
		}
	}
);

// The order names its cart, so cartback's order webhook ends that cart's reminders.
add_action(
	'woocommerce_checkout_create_order',
	function ( $order ) {
		$token = WC()->session ? WC()->session->get( 'cartback_cart_token' ) : null;
		if ( $token ) {
			$order->update_meta_data( CARTBACK_ORDER_META, $token );
		}
	}
);

// A new cart after an order is a new cart.
add_action(
	'woocommerce_checkout_order_processed',
	function () {
		if ( WC()->session ) {
			WC()->session->set( 'cartback_cart_token', null );
		}
	}
);

// The restore link: put the cart back and go to the checkout.
add_action(
	'template_redirect',
	function () {
		if ( empty( $_GET['cartback_restore'] ) || ! function_exists( 'WC' ) ) {
			return;
		}
		$token = sanitize_text_field( wp_unslash( $_GET['cartback_restore'] ) );
		$kept  = get_transient( 'cartback_cart_' . $token );
		if ( is_array( $kept ) ) {
			WC()->cart->empty_cart();
			foreach ( $kept as $line ) {
				list( $product_id, $quantity, $variation_id, $variation ) = $line;
				WC()->cart->add_to_cart( $product_id, $quantity, $variation_id, $variation );
			}
			// Later changes to the restored cart are the same cart to cartback.
			WC()->session->set( 'cartback_cart_token', $token );
		}
		wp_safe_redirect( wc_get_checkout_url() );
		exit;
	}
);
