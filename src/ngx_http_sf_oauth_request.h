
/*
 * A request's life in the module: its context (ngx_http_sf_oauth_ctx_t),
 * the header slots that hold the token while the upstream request is
 * built, a SOAP envelope's plan, and the waiter that a refresh wakes.
 *
 * Included by ngx_http_sf_oauth.h, after ngx_http_sf_oauth_conf.h; never
 * on its own.
 */


#ifndef _NGX_HTTP_SF_OAUTH_REQUEST_H_INCLUDED_
#define _NGX_HTTP_SF_OAUTH_REQUEST_H_INCLUDED_


/*
 * A request waiting for a credential's token, in the credential's queue of
 * waiters: the refresh posts its event when the token request is over.
 */
typedef struct {
    ngx_queue_t                  queue;
    ngx_event_t                  event;
} ngx_http_sf_oauth_waiter_t;


/* a SOAP envelope's plan: see ngx_http_sf_oauth_envelope.c */
typedef struct {
    ngx_array_t                  parts;       /* ngx_str_t, null: a token */
    ngx_array_t                  marks;       /* ngx_str_t: before, after */
    ngx_chain_t                 *rest;
    off_t                        size;

    /* the call: the Body's first element, if it is login or logout */
    ngx_uint_t                   call;
} ngx_http_sf_oauth_envelope_t;


/*
 * A header element that holds the token while the upstream request is
 * built, and what it held before: the client's value, or nothing
 * ("pushed": the element was added).
 */
typedef struct {
    ngx_table_elt_t             *header;
    ngx_str_t                    saved_key;
    ngx_str_t                    saved_value;
    u_char                      *saved_lowcase_key;
    ngx_uint_t                   saved_hash;
    ngx_uint_t                   pushed;
} ngx_http_sf_oauth_slot_t;


typedef struct {
    ngx_http_request_t          *request;
    ngx_http_sf_oauth_cred_t    *cred;

    ngx_uint_t                   status;
    ngx_uint_t                   generation;

    /* "Bearer <token>" for the upstream; the token itself follows "Bearer " */
    ngx_str_t                    authorization;

    /* the upstream this module gave the token to */
    ngx_http_upstream_t         *upstream;

    /*
     * Authorization, X-SFDC-Session for Bulk 1.0, and the Content-Encoding
     * of a gzip-compressed SOAP envelope, which goes inflated
     */
    ngx_http_sf_oauth_slot_t     auth;
    ngx_http_sf_oauth_slot_t     session;
    ngx_http_sf_oauth_slot_t     coding;

    /*
     * a client's second X-SFDC-Session, and more: the token in each; for
     * the Pub/Sub API, the client's Authorization and its second
     * accesstoken, instanceurl or tenantid, none of which goes on
     */
    ngx_array_t                 *sessions;

    /*
     * The Pub/Sub API's metadata (accesstoken, instanceurl, tenantid), and
     * the instance_url and org id put there, of the token's answer
     */
    ngx_http_sf_oauth_slot_t     meta[3];
    ngx_str_t                    instance_url;
    ngx_str_t                    org_id;

    /* REST, SOAP, Bulk 1.0, CometD or the Pub/Sub API (gRPC) */
    ngx_uint_t                   kind;

    /* a CometD answer held: the channel of its request */
    ngx_uint_t                   bayeux;

    /*
     * A SOAP request's envelope: its plan, and the client's body and
     * length, which the request holds again once the upstream request is
     * built.
     */
    ngx_http_sf_oauth_envelope_t *envelope;
    ngx_chain_t                 *client_body;
    off_t                        client_length;

    /*
     * A gzip-compressed envelope being inflated, and the event that
     * inflates its next slice on the next turn of the event loop
     */
    ngx_http_sf_oauth_inflate_t *inflate;
    ngx_event_t                  inflating;

    /* finds this ctx again after an internal redirect zeroed r->ctx */
    ngx_pool_cleanup_t           cln;

    ngx_http_sf_oauth_waiter_t   waiter;
    ngx_msec_t                   deadline;
    ngx_msec_t                   poll;

    /* a held 401 too soon after an uncured one: when to ask again */
    ngx_msec_t                   rejected_until;

    /*
     * The wall clock's ms when the request's first 401 was held, and when
     * the token it now has was got: see
     * ngx_http_sf_oauth_wait_is_stale_replay()
     */
    uint64_t                     rejected_ms;
    uint64_t                     token_ms;
    ngx_uint_t                   replays;

    /* the body of a response that may say the session is dead, so far */
    ngx_buf_t                   *inspected;

    /* saved when a 401 is held: the proxy_buffering off path changes them */
    size_t                       limit_rate;

    unsigned                     waiting:1;
    unsigned                     wait_begun:1;
    unsigned                     kind_known:1;
    unsigned                     body_set:1;
    unsigned                     inspecting:1;
    unsigned                     gzipped:1;
    unsigned                     unshared:1;
    unsigned                     held:1;
    unsigned                     replayed:1;
    unsigned                     noted:1;
    unsigned                     later:1;
    unsigned                     limit_rate_set:1;

    /*
     * Asked once for a replay whose token was got before its first 401:
     * whether 401s lately were not cured, see
     * ngx_http_sf_oauth_wait_is_stale_replay()
     */
    unsigned                     uncured_asked:1;
    unsigned                     uncured:1;
    unsigned                     cured:1;

    /* the token came from a record: see wait_is_stale_replay() */
    unsigned                     token_adopted:1;
} ngx_http_sf_oauth_ctx_t;


/*
 * A callback request waiting for its code exchange (connect.c): "r" is
 * NULL once the request is gone (its pool's cleanup), and the exchange's
 * outcome is then stored all the same, with nobody to show it to.
 */
typedef struct {
    ngx_http_request_t          *r;
    ngx_pool_cleanup_t          *cln;
    ngx_uint_t                   slot;
    u_char                       state[NGX_HTTP_SF_OAUTH_CONNECT_STATE];
    size_t                       addr_len;
    u_char                       addr[NGX_SOCKADDR_STRLEN];
    size_t                       user_len;
    u_char                       user[NGX_HTTP_SF_OAUTH_NAME_MAX];
} ngx_http_sf_oauth_exchange_t;


#endif /* _NGX_HTTP_SF_OAUTH_REQUEST_H_INCLUDED_ */
