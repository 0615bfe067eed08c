
/*
 * The web server flow with PKCE, from the console (sf_oauth_console): how
 * an operator connects a refresh-token credential to a Salesforce user.
 *
 *   - POST <console>connect, with "credential" and the console form's
 *     token: the flow starts.  A pending entry goes into the zone
 *     "sf_oauth_connect" (state, PKCE verifier, redirect_uri, the hash of
 *     a cookie that binds the flow to this browser), and the answer is a
 *     303 to Salesforce's authorize URL, with the cookie.
 *   - GET <console>callback: Salesforce's redirect.  The state is taken
 *     once, under the zone's lock, and only with its cookie; the code is
 *     exchanged under the credential's lease (ngx_http_sf_oauth_refresh.c)
 *     while the request waits; the tokens become the credential's newest
 *     generation, unless they are another user's or org's than the
 *     record's: those wait in the entry for a confirmation.
 *   - POST <console>confirm, with "credential" and a form token, from the
 *     same browser (its cookie): the waiting tokens are stored.
 *
 * The form tokens are HMAC-SHA256 of the zone's random key over what the
 * form is for, the credential and the hour: any worker can check one.
 * Nothing secret (token, code, verifier, state, cookie) is ever put in a
 * page, a log line or a header other than the protocol's.
 *
 * The file is over a thousand lines and one concern, a connection's life
 * from the Connect button to the stored token: the pending entries, the
 * form token and cookie checks, the exchange's wait and each step's page
 * are the steps of that one flow, and its safety can only be read in one
 * piece.  The console's page is ngx_http_sf_oauth_console.c, the pages'
 * headers ngx_http_sf_oauth_page.c, the exchange ngx_http_sf_oauth_refresh.c.
 */


#include "ngx_http_sf_oauth.h"


/* a string that points at "n" bytes of "d" */
#define ngx_http_sf_oauth_str_point(str, d, n)                               \
    (str).data = (u_char *) (d); (str).len = (n)

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>


#define NGX_HTTP_SF_OAUTH_CONNECT_ZONE_SIZE  (1024 * 1024)
#define NGX_HTTP_SF_OAUTH_CONNECT_BODY_MAX   4096
#define NGX_HTTP_SF_OAUTH_CONNECT_WINDOW     3600


static ngx_int_t ngx_http_sf_oauth_connect_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_sf_oauth_connect_sh_t *ngx_http_sf_oauth_connect_sh(
    ngx_http_request_t *r, ngx_slab_pool_t **shpool);
static void ngx_http_sf_oauth_connect_posted(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_connect_start(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_connect_callback(ngx_http_request_t *r);
static void ngx_http_sf_oauth_connect_mask(ngx_str_t *s, const char *name);
static void ngx_http_sf_oauth_connect_spent(ngx_http_request_t *r,
    ngx_uint_t slot, u_char *state, ngx_uint_t give_back);
static ngx_int_t ngx_http_sf_oauth_connect_confirm(ngx_http_request_t *r);
static void ngx_http_sf_oauth_connect_exchanged(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_token_t *tok,
    ngx_uint_t status, void *data);
static void ngx_http_sf_oauth_connect_gone(void *data);
static ngx_int_t ngx_http_sf_oauth_connect_denied(ngx_http_request_t *r,
    ngx_str_t *error, ngx_str_t *state);
static ngx_int_t ngx_http_sf_oauth_connect_take(ngx_http_request_t *r,
    ngx_str_t *state, ngx_http_sf_oauth_pending_t *copy, ngx_uint_t *slot,
    ngx_int_t *sent);
static ngx_int_t ngx_http_sf_oauth_connect_same_site(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_connect_form_token(ngx_http_request_t *r,
    const char *purpose, ngx_str_t *name, time_t window, u_char *dst);
static ngx_int_t ngx_http_sf_oauth_connect_form_ok(ngx_http_request_t *r,
    const char *purpose, ngx_str_t *name, ngx_str_t *token);
static ngx_int_t ngx_http_sf_oauth_connect_cookie(ngx_http_request_t *r,
    u_char *hash);
static ngx_int_t ngx_http_sf_oauth_connect_body(ngx_http_request_t *r,
    ngx_str_t *credential, ngx_str_t *form);
static void ngx_http_sf_oauth_connect_field(ngx_str_t *body,
    const char *name, ngx_str_t *value);
static size_t ngx_http_sf_oauth_connect_unescape(u_char *p, size_t len);
static u_char *ngx_http_sf_oauth_connect_escape(u_char *dst, u_char *src,
    size_t len);
static void ngx_http_sf_oauth_connect_random(u_char *dst, size_t n);
static void ngx_http_sf_oauth_connect_sha256(u_char *dst, u_char *src,
    size_t len);
static ngx_table_elt_t *ngx_http_sf_oauth_connect_header(
    ngx_http_request_t *r, const char *name);
static ngx_int_t ngx_http_sf_oauth_connect_add_header(ngx_http_request_t *r,
    const char *name, ngx_str_t *value);
static void ngx_http_sf_oauth_connect_own_origin(ngx_http_request_t *r,
    ngx_str_t *origin);
static void ngx_http_sf_oauth_connect_audit(ngx_log_t *log,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_token_t *tok,
    ngx_uint_t generation, ngx_str_t *addr, ngx_str_t *user);
static void ngx_http_sf_oauth_connect_who(ngx_http_request_t *r,
    ngx_str_t *addr, ngx_str_t *user);
static ngx_int_t ngx_http_sf_oauth_connect_page(ngx_http_request_t *r,
    ngx_uint_t status, const char *title, const char *text,
    ngx_str_t *detail);
static ngx_int_t ngx_http_sf_oauth_connect_other_user(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *old,
    ngx_http_sf_oauth_token_t *tok);


static ngx_str_t  ngx_http_sf_oauth_connect_zone_name =
    ngx_string("sf_oauth_connect");

static ngx_str_t  ngx_http_sf_oauth_connect_cookie_var =
    ngx_string("cookie_sf_oauth_connect");


/*
 * For the first sf_oauth_console: the module's zone of pending flows,
 * one for every console (any worker may take a callback).
 */

char *
ngx_http_sf_oauth_connect_conf(ngx_conf_t *cf)
{
    ngx_shm_zone_t                 *shm_zone;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_sf_oauth_module);

    if (smcf->connect_zone) {
        return NGX_CONF_OK;
    }

    /*
     * A tag of its own: the token zones' code walks every zone tagged
     * with the module (ngx_http_sf_oauth_zone.c), and this one is not one
     */
    shm_zone = ngx_shared_memory_add(cf, &ngx_http_sf_oauth_connect_zone_name,
                                     NGX_HTTP_SF_OAUTH_CONNECT_ZONE_SIZE,
                                     &ngx_http_sf_oauth_connect_zone_name);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_sf_oauth_connect_init_zone;
    smcf->connect_zone = shm_zone;

    return NGX_CONF_OK;
}


/* in the master: a new zone gets its key; a reload keeps the old zone */

static ngx_int_t
ngx_http_sf_oauth_connect_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t                 *shpool;
    ngx_http_sf_oauth_connect_sh_t  *sh;

    if (data) {
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_sf_oauth_connect_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    if (RAND_bytes(sh->key, sizeof(sh->key)) != 1) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "sf_oauth: RAND_bytes() failed for the console's "
                      "form key");
        return NGX_ERROR;
    }

    shm_zone->data = sh;

    return NGX_OK;
}


static ngx_http_sf_oauth_connect_sh_t *
ngx_http_sf_oauth_connect_sh(ngx_http_request_t *r, ngx_slab_pool_t **shpool)
{
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);

    *shpool = (ngx_slab_pool_t *) smcf->connect_zone->shm.addr;

    return smcf->connect_zone->data;
}


/*
 * The console's routes of the flow: "connect" and "confirm" (POST), and
 * "callback" (GET).  NGX_DECLINED: the URI is none of them.
 */

ngx_int_t
ngx_http_sf_oauth_connect_route(ngx_http_request_t *r, ngx_str_t *rest)
{
    ngx_int_t  rc;

    if ((rest->len == 7 && ngx_strncmp(rest->data, "connect", 7) == 0)
        || (rest->len == 7 && ngx_strncmp(rest->data, "confirm", 7) == 0))
    {
        if (r->method != NGX_HTTP_POST) {
            return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_NOT_ALLOWED,
                                                  "Method not allowed",
                                                  "This page takes the "
                                                  "console's form (POST) "
                                                  "only.", NULL);
        }

        rc = ngx_http_read_client_request_body(r,
                                         ngx_http_sf_oauth_connect_posted);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    if (rest->len == 8 && ngx_strncmp(rest->data, "callback", 8) == 0) {

        /* not HEAD either: a callback spends its state and its code */

        if (r->method != NGX_HTTP_GET) {
            return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_NOT_ALLOWED,
                                                  "Method not allowed",
                                                  "The callback takes GET "
                                                  "only.", NULL);
        }

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_sf_oauth_connect_callback(r);

        /*
         * What the callback needs of its query is copied: the code and
         * the state are masked where the access log would find them
         * ($request, $request_uri, $args), in place
         */

        ngx_http_sf_oauth_connect_mask(&r->request_line, "code=");
        ngx_http_sf_oauth_connect_mask(&r->request_line, "state=");
        ngx_http_sf_oauth_connect_mask(&r->unparsed_uri, "code=");
        ngx_http_sf_oauth_connect_mask(&r->unparsed_uri, "state=");
        ngx_http_sf_oauth_connect_mask(&r->args, "code=");
        ngx_http_sf_oauth_connect_mask(&r->args, "state=");

        return rc;
    }

    return NGX_DECLINED;
}


/* the body of a POST is read: connect or confirm */

static void
ngx_http_sf_oauth_connect_posted(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (ngx_strncmp(r->uri.data + r->uri.len - 7, "connect", 7) == 0) {
        rc = ngx_http_sf_oauth_connect_start(r);

    } else {
        rc = ngx_http_sf_oauth_connect_confirm(r);
    }

    ngx_http_finalize_request(r, rc);
}


/* POST connect: the flow starts, a 303 to Salesforce's authorize URL */

static ngx_int_t
ngx_http_sf_oauth_connect_start(ngx_http_request_t *r)
{
    u_char                          *p;
    u_char                           rnd[48], challenge[32];
    u_char                           state[NGX_HTTP_SF_OAUTH_CONNECT_STATE];
    u_char                           cookie[NGX_HTTP_SF_OAUTH_CONNECT_STATE];
    u_char                           verifier[
                                         NGX_HTTP_SF_OAUTH_CONNECT_VERIFIER];
    u_char                           chal[44];
    size_t                           len;
    time_t                           now;
    ngx_str_t                        name, form, redirect, url, value, src,
                                     dst, origin;
    ngx_uint_t                       i, slot;
    ngx_slab_pool_t                 *shpool;
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_sf_oauth_cred_t        *cred;
    ngx_http_sf_oauth_pending_t     *pe;
    ngx_http_sf_oauth_connect_sh_t  *sh;
    ngx_http_sf_oauth_main_conf_t   *smcf;

    if (ngx_http_sf_oauth_connect_body(r, &name, &form) != NGX_OK) {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "The form could not be read: "
                                              "use the Connect button of "
                                              "the console.", NULL);
    }

    if (ngx_http_sf_oauth_connect_same_site(r) != NGX_OK
        || ngx_http_sf_oauth_connect_form_ok(r, "connect", &name, &form)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "sf_oauth: a connect request that did not come from "
                      "the console page was refused");

        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_FORBIDDEN,
                                              "Forbidden",
                                              "This request did not come "
                                              "from the console page (a "
                                              "cross-site request, or a "
                                              "form token that is missing "
                                              "or expired): reload the "
                                              "console and click Connect "
                                              "again.", NULL);
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = ngx_http_sf_oauth_credential_find(smcf, &name);

    if (cred == NULL || cred->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH) {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "No credential of the refresh "
                                              "token grant has this name: "
                                              "only those are connected "
                                              "from the console.", NULL);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    /* redirect_uri: connect_url, or this console's own callback */

    if (cred->connect_url.len) {
        redirect = cred->connect_url;

    } else {
        ngx_http_sf_oauth_connect_own_origin(r, &origin);

        redirect.len = origin.len + clcf->name.len + sizeof("callback") - 1;
        redirect.data = ngx_pnalloc(r->pool, redirect.len);
        if (redirect.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_sprintf(redirect.data, "%V%Vcallback", &origin, &clcf->name);
    }

    if (redirect.len > NGX_HTTP_SF_OAUTH_URL_MAX) {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "The callback URL is too "
                                              "long: set connect_url.",
                                              NULL);
    }

    /* state, verifier and cookie: random, base64url */

    src.data = rnd;

    ngx_http_sf_oauth_connect_random(rnd, NGX_HTTP_SF_OAUTH_CONNECT_RANDOM);
    src.len = NGX_HTTP_SF_OAUTH_CONNECT_RANDOM;
    dst.data = state;
    ngx_encode_base64url(&dst, &src);

    ngx_http_sf_oauth_connect_random(rnd, NGX_HTTP_SF_OAUTH_CONNECT_RANDOM);
    dst.data = cookie;
    ngx_encode_base64url(&dst, &src);

    ngx_http_sf_oauth_connect_random(rnd, 48);
    src.len = 48;
    dst.data = verifier;
    ngx_encode_base64url(&dst, &src);

    ngx_http_sf_oauth_connect_sha256(challenge, verifier, sizeof(verifier));
    src.data = challenge;
    src.len = 32;
    dst.data = chal;
    ngx_encode_base64url(&dst, &src);       /* 43 characters */

    ngx_explicit_memzero(rnd, sizeof(rnd));

    /* the pending entry: a free one, a used one or an expired one */

    sh = ngx_http_sf_oauth_connect_sh(r, &shpool);
    now = ngx_time();

    ngx_shmtx_lock(&shpool->mutex);

    slot = NGX_HTTP_SF_OAUTH_CONNECT_PENDING;

    for (i = 0; i < NGX_HTTP_SF_OAUTH_CONNECT_PENDING; i++) {
        pe = &sh->pending[i];

        /* one waiting for its confirmation is in use, though used */

        if (!pe->in_use || (pe->used && !pe->confirm)
            || now - pe->created > NGX_HTTP_SF_OAUTH_CONNECT_TTL)
        {
            slot = i;
            break;
        }
    }

    if (slot == NGX_HTTP_SF_OAUTH_CONNECT_PENDING) {
        ngx_shmtx_unlock(&shpool->mutex);

        return ngx_http_sf_oauth_connect_page(r,
                                              NGX_HTTP_SERVICE_UNAVAILABLE,
                                              "Too many connections",
                                              "Too many connections are "
                                              "under way: finish one, or "
                                              "try again in 10 minutes.",
                                              NULL);
    }

    pe = &sh->pending[slot];

    ngx_explicit_memzero(pe, sizeof(ngx_http_sf_oauth_pending_t));
    pe->in_use = 1;
    pe->created = now;
    ngx_memcpy(pe->state, state, sizeof(state));
    ngx_http_sf_oauth_connect_sha256(pe->cookie, cookie, sizeof(cookie));
    ngx_memcpy(pe->verifier, verifier, sizeof(verifier));
    pe->name_len = cred->name.len;
    ngx_memcpy(pe->name, cred->name.data, cred->name.len);
    pe->redirect_len = redirect.len;
    ngx_memcpy(pe->redirect, redirect.data, redirect.len);

    ngx_shmtx_unlock(&shpool->mutex);

    ngx_explicit_memzero(verifier, sizeof(verifier));

    /* the authorize URL, every value escaped */

    len = cred->token_origin.len
          + sizeof("/services/oauth2/authorize?response_type=code"
                   "&client_id=&redirect_uri="
                   "&scope=api%20refresh_token&prompt=login%20consent"
                   "&state=&code_challenge=&code_challenge_method=S256") - 1
          + 3 * cred->client_id.len + 3 * redirect.len
          + sizeof(state) + 43;

    url.data = ngx_pnalloc(r->pool, len);
    if (url.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(url.data, "%V/services/oauth2/authorize"
                    "?response_type=code&client_id=", &cred->token_origin);
    p = ngx_http_sf_oauth_connect_escape(p, cred->client_id.data,
                                         cred->client_id.len);
    p = ngx_cpymem(p, "&redirect_uri=", sizeof("&redirect_uri=") - 1);
    p = ngx_http_sf_oauth_connect_escape(p, redirect.data, redirect.len);
    p = ngx_cpymem(p, "&scope=api%20refresh_token&prompt=login%20consent"
                   "&state=",
                   sizeof("&scope=api%20refresh_token&prompt=login%20consent"
                          "&state=") - 1);
    p = ngx_cpymem(p, state, sizeof(state));
    p = ngx_cpymem(p, "&code_challenge=", sizeof("&code_challenge=") - 1);
    p = ngx_cpymem(p, chal, 43);
    p = ngx_cpymem(p, "&code_challenge_method=S256",
                   sizeof("&code_challenge_method=S256") - 1);
    url.len = p - url.data;

    /* the cookie that binds the flow to this browser */

    value.len = sizeof("sf_oauth_connect=; Path=; Max-Age=600; HttpOnly; "
                       "SameSite=Lax; Secure") - 1
                + sizeof(cookie) + clcf->name.len;
    value.data = ngx_pnalloc(r->pool, value.len);
    if (value.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(value.data, "sf_oauth_connect=%*s; Path=%V; "
                    "Max-Age=%d; HttpOnly; SameSite=Lax",
                    sizeof(cookie), cookie, &clcf->name,
                    NGX_HTTP_SF_OAUTH_CONNECT_TTL);
#if (NGX_HTTP_SSL)
    if (r->connection->ssl) {
        p = ngx_cpymem(p, "; Secure", sizeof("; Secure") - 1);
    }
#endif
    value.len = p - value.data;

    if (ngx_http_sf_oauth_connect_add_header(r, "Set-Cookie", &value)
        != NGX_OK
        || ngx_http_sf_oauth_connect_add_header(r, "Location", &url)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "sf_oauth: credential \"%V\": a connection started "
                  "from the console, to the callback \"%V\"",
                  &cred->name, &redirect);

    return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_SEE_OTHER,
                                          "Salesforce login",
                                          "Continue to Salesforce's login "
                                          "page.", &cred->token_origin);
}


/* GET callback: Salesforce's redirect with the code, or an error */

static ngx_int_t
ngx_http_sf_oauth_connect_callback(ngx_http_request_t *r)
{
    u_char                        *p;
    ngx_int_t                      rc;
    ngx_str_t                      state, code, error, redirect, verifier,
                                   name, addr, user;
    ngx_uint_t                     slot;
    ngx_pool_cleanup_t            *cln;
    ngx_http_sf_oauth_cred_t      *cred;
    ngx_http_sf_oauth_pending_t   *pe;
    ngx_http_sf_oauth_exchange_t  *ex;
    ngx_http_sf_oauth_main_conf_t *smcf;

    if (ngx_http_arg(r, (u_char *) "state", 5, &state) != NGX_OK) {
        ngx_str_null(&state);
    }

    if (ngx_http_arg(r, (u_char *) "error", 5, &error) == NGX_OK) {
        return ngx_http_sf_oauth_connect_denied(r, &error, &state);
    }

    if (state.len == 0) {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "The callback has no state: "
                                              "start again from the "
                                              "console.", NULL);
    }

    pe = ngx_pcalloc(r->pool, sizeof(ngx_http_sf_oauth_pending_t));
    if (pe == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_sf_oauth_connect_take(r, &state, pe, &slot, &rc)
        != NGX_OK)
    {
        /* refused: its page was sent */
        return rc;
    }

    name.data = pe->name;
    name.len = pe->name_len;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = ngx_http_sf_oauth_credential_find(smcf, &name);

    if (cred == NULL || cred->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH) {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "The credential of this "
                                              "connection no longer exists "
                                              "or does not use the refresh "
                                              "token grant: nothing was "
                                              "stored.", &name);
    }

    if (ngx_http_arg(r, (u_char *) "code", 4, &code) != NGX_OK
        || code.len == 0 || code.len > NGX_HTTP_SF_OAUTH_TOKEN_MAX)
    {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "The callback has no code: "
                                              "start again from the "
                                              "console.", NULL);
    }

    p = ngx_pnalloc(r->pool, code.len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, code.data, code.len);
    code.data = p;
    code.len = ngx_http_sf_oauth_connect_unescape(p, code.len);

    redirect.data = pe->redirect;
    redirect.len = pe->redirect_len;
    verifier.data = pe->verifier;
    verifier.len = NGX_HTTP_SF_OAUTH_CONNECT_VERIFIER;

    ex = ngx_calloc(sizeof(ngx_http_sf_oauth_exchange_t), r->connection->log);
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (ex == NULL || cln == NULL) {
        ngx_free(ex);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ex->r = r;
    ex->cln = cln;
    ex->slot = slot;
    ngx_memcpy(ex->state, pe->state, NGX_HTTP_SF_OAUTH_CONNECT_STATE);

    ngx_http_sf_oauth_connect_who(r, &addr, &user);
    ex->addr_len = ngx_min(addr.len, sizeof(ex->addr));
    ngx_memcpy(ex->addr, addr.data, ex->addr_len);
    ex->user_len = ngx_min(user.len, sizeof(ex->user));
    ngx_memcpy(ex->user, user.data, ex->user_len);

    rc = ngx_http_sf_oauth_refresh_exchange(cred, &code, &redirect,
                                            &verifier,
                                            ngx_http_sf_oauth_connect_exchanged,
                                            ex);

    ngx_explicit_memzero(code.data, code.len);
    ngx_explicit_memzero(pe->verifier, sizeof(pe->verifier));

    /* a refresh runs: the state is given back, the callback may be retried */
    ngx_http_sf_oauth_connect_spent(r, slot, ex->state, rc == NGX_BUSY);

    if (rc != NGX_OK) {
        ngx_free(ex);

        if (rc == NGX_BUSY) {
            return ngx_http_sf_oauth_connect_page(r,
                                              NGX_HTTP_SERVICE_UNAVAILABLE,
                                              "A refresh is running",
                                              "A token refresh of this "
                                              "credential is running: "
                                              "reload this page in a "
                                              "moment.", NULL);
        }

        return ngx_http_sf_oauth_connect_page(r,
                                              NGX_HTTP_SERVICE_UNAVAILABLE,
                                              "Not connected",
                                              "The code exchange could not "
                                              "be started (a reload changed "
                                              "the credential?): start "
                                              "again from the console.",
                                              NULL);
    }

    /* the request waits for the exchange; a client gone is noticed */

    cln->handler = ngx_http_sf_oauth_connect_gone;
    cln->data = ex;

    r->main->count++;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_DONE;
}


/* the callback's request is freed before the exchange's end */

static void
ngx_http_sf_oauth_connect_gone(void *data)
{
    ngx_http_sf_oauth_exchange_t  *ex = data;

    ex->r = NULL;
}


/* the exchange's outcome: stored, kept for a confirmation, or an error */

static void
ngx_http_sf_oauth_connect_exchanged(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok, ngx_uint_t status, void *data)
{
    ngx_http_sf_oauth_exchange_t  *ex = data;

    ngx_int_t                        rc;
    ngx_str_t                        addr, user;
    ngx_log_t                       *log;
    ngx_uint_t                       generation, other;
    ngx_connection_t                *c;
    ngx_slab_pool_t                 *shpool;
    ngx_http_request_t              *r;
    ngx_http_sf_oauth_node_t        *old;
    ngx_http_sf_oauth_pending_t     *pe;
    ngx_http_sf_oauth_connect_sh_t  *sh;
    ngx_http_sf_oauth_main_conf_t   *smcf;

    r = ex->r;

    if (r) {
        ex->cln->handler = NULL;
    }

    log = r ? r->connection->log : ngx_cycle->log;

    if (!tok->ok) {
        rc = NGX_ERROR;

        if (r) {
            rc = ngx_http_sf_oauth_connect_page(r, status,
                                                status
                                                == NGX_HTTP_GATEWAY_TIME_OUT
                                                ? "Salesforce is slow"
                                                : "Not connected",
                                                "The code exchange at the "
                                                "token endpoint failed, and "
                                                "nothing was stored: start "
                                                "again from the console.",
                                                &tok->error);
        }

        goto done;
    }

    /* another user or org than the record's: stored on confirmation only */

    old = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), log);
    if (old == NULL) {
        ngx_http_sf_oauth_store_release(cred);
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    ngx_http_sf_oauth_store_snapshot(cred, old);

    other = old->user_id_len
            && (old->user_id_len != tok->user_id.len
                || ngx_memcmp(old->user_id, tok->user_id.data,
                              tok->user_id.len) != 0
                || old->org_id_len != tok->org_id.len
                || ngx_memcmp(old->org_id, tok->org_id.data,
                              tok->org_id.len) != 0);

    if (other) {
        ngx_http_sf_oauth_store_release(cred);

        smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                                   ngx_http_sf_oauth_module);
        shpool = (ngx_slab_pool_t *) smcf->connect_zone->shm.addr;
        sh = smcf->connect_zone->data;
        pe = &sh->pending[ex->slot];

        ngx_shmtx_lock(&shpool->mutex);

        if (ngx_memcmp(pe->state, ex->state, NGX_HTTP_SF_OAUTH_CONNECT_STATE)
            == 0
            && tok->access_token.len <= NGX_HTTP_SF_OAUTH_TOKEN_MAX
            && tok->refresh_token.len <= NGX_HTTP_SF_OAUTH_REFRESH_MAX
            && tok->instance_url.len <= NGX_HTTP_SF_OAUTH_URL_MAX)
        {
            pe->confirm = 1;
            pe->created = ngx_time();
            pe->issued_at = tok->issued_at;
            pe->token_len = tok->access_token.len;
            ngx_memcpy(pe->token, tok->access_token.data, pe->token_len);
            pe->refresh_len = tok->refresh_token.len;
            ngx_memcpy(pe->refresh, tok->refresh_token.data,
                       pe->refresh_len);
            pe->url_len = tok->instance_url.len;
            ngx_memcpy(pe->instance_url, tok->instance_url.data,
                       pe->url_len);
            pe->org_id_len = tok->org_id.len;
            ngx_memcpy(pe->org_id, tok->org_id.data, pe->org_id_len);
            pe->user_id_len = tok->user_id.len;
            ngx_memcpy(pe->user_id, tok->user_id.data, pe->user_id_len);
        }

        ngx_shmtx_unlock(&shpool->mutex);

        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "sf_oauth: credential \"%V\": the login is user %V of "
                      "org %V, not the connected user %*s of org %*s: "
                      "nothing is stored until the operator confirms",
                      &cred->name, &tok->user_id, &tok->org_id,
                      old->user_id_len, old->user_id, old->org_id_len,
                      old->org_id);

        rc = r ? ngx_http_sf_oauth_connect_other_user(r, cred, old, tok)
               : NGX_ERROR;

        ngx_explicit_memzero(old, sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(old);
        goto done;
    }

    ngx_explicit_memzero(old, sizeof(ngx_http_sf_oauth_node_t));
    ngx_free(old);

    generation = ngx_http_sf_oauth_refresh_connected(cred, tok);

    addr.data = ex->addr;
    addr.len = ex->addr_len;
    user.data = ex->user;
    user.len = ex->user_len;

    ngx_http_sf_oauth_connect_audit(log, cred, tok, generation, &addr, &user);

    rc = r ? ngx_http_sf_oauth_connect_page(r, NGX_HTTP_OK, "Connected",
                                            "The credential is connected: "
                                            "requests use the new token "
                                            "now.", &cred->name)
           : NGX_ERROR;

done:

    ngx_free(ex);

    if (r) {
        c = r->connection;
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
}


/* the other user's or org's tokens: side by side, and a confirm form */

static ngx_int_t
ngx_http_sf_oauth_connect_other_user(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *old,
    ngx_http_sf_oauth_token_t *tok)
{
    u_char                    *p;
    u_char                     mac[32], form[44];
    size_t                     len;
    ngx_buf_t                 *b;
    ngx_str_t                  title, src, dst;
    ngx_chain_t               *out;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (ngx_http_sf_oauth_connect_form_token(r, "confirm", &cred->name,
                                             ngx_time()
                                             / NGX_HTTP_SF_OAUTH_CONNECT_WINDOW,
                                             mac)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    src.data = mac;
    src.len = 32;
    dst.data = form;

    len = 1024 + 4 * NGX_HTTP_SF_OAUTH_ID_MAX
          + 2 * ngx_http_sf_oauth_page_escape_len(cred->name.data,
                                                  cred->name.len)
          + clcf->name.len + 43;

    b = ngx_create_temp_buf(r->pool, len);
    out = ngx_alloc_chain_link(r->pool);
    if (b == NULL || out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "<h1>Another user or org</h1>\n<p>The login "
                   "for credential <code>",
                   sizeof("<h1>Another user or org</h1>\n<p>The login "
                          "for credential <code>") - 1);
    p = ngx_http_sf_oauth_page_escape(p, cred->name.data, cred->name.len);
    p = ngx_sprintf(p, "</code> is not the connected user. Nothing is "
                    "stored until you confirm.</p>\n<table>\n"
                    "<tr><th></th><th>user</th><th>org</th></tr>\n"
                    "<tr><td>connected now</td><td>");
    p = ngx_http_sf_oauth_page_escape(p, old->user_id, old->user_id_len);
    p = ngx_cpymem(p, "</td><td>", sizeof("</td><td>") - 1);
    p = ngx_http_sf_oauth_page_escape(p, old->org_id, old->org_id_len);
    p = ngx_cpymem(p, "</td></tr>\n<tr><td>this login</td><td>",
                   sizeof("</td></tr>\n<tr><td>this login</td><td>") - 1);
    p = ngx_http_sf_oauth_page_escape(p, tok->user_id.data, tok->user_id.len);
    p = ngx_cpymem(p, "</td><td>", sizeof("</td><td>") - 1);
    p = ngx_http_sf_oauth_page_escape(p, tok->org_id.data, tok->org_id.len);
    p = ngx_sprintf(p, "</td></tr>\n</table>\n<form method=\"post\" "
                    "action=\"%Vconfirm\">\n<input type=\"hidden\" "
                    "name=\"credential\" value=\"", &clcf->name);
    p = ngx_http_sf_oauth_page_escape(p, cred->name.data, cred->name.len);
    p = ngx_cpymem(p, "\">\n<input type=\"hidden\" name=\"form\" value=\"",
                   sizeof("\">\n<input type=\"hidden\" name=\"form\" "
                          "value=\"") - 1);
    ngx_encode_base64url(&dst, &src);
    p = ngx_cpymem(p, dst.data, dst.len);
    p = ngx_sprintf(p, "\">\n<button type=\"submit\">Use this user and "
                    "org</button>\n</form>\n<p><a href=\"%V\">Back to the "
                    "console</a> (keeps the connected user)</p>\n",
                    &clcf->name);

    b->last = p;
    out->buf = b;
    out->next = NULL;

    ngx_str_set(&title, "Another user or org");

    return ngx_http_sf_oauth_page_send(r, NGX_HTTP_OK, &title, out, NULL);
}


/* POST confirm: the tokens kept for another user or org are stored */

static ngx_int_t
ngx_http_sf_oauth_connect_confirm(ngx_http_request_t *r)
{
    u_char                           hash[32];
    ngx_int_t                        rc;
    ngx_str_t                        name, form, addr, user;
    ngx_uint_t                       i, generation, found;
    ngx_slab_pool_t                 *shpool;
    ngx_http_sf_oauth_cred_t        *cred;
    ngx_http_sf_oauth_token_t        tok;
    ngx_http_sf_oauth_pending_t     *pe, *copy;
    ngx_http_sf_oauth_connect_sh_t  *sh;
    ngx_http_sf_oauth_main_conf_t   *smcf;

    if (ngx_http_sf_oauth_connect_body(r, &name, &form) != NGX_OK
        || ngx_http_sf_oauth_connect_same_site(r) != NGX_OK
        || ngx_http_sf_oauth_connect_form_ok(r, "confirm", &name, &form)
           != NGX_OK)
    {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_FORBIDDEN,
                                              "Forbidden",
                                              "This confirmation did not "
                                              "come from the connection's "
                                              "page: nothing was stored.",
                                              NULL);
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = ngx_http_sf_oauth_credential_find(smcf, &name);

    if (cred == NULL || cred->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH
        || ngx_http_sf_oauth_connect_cookie(r, hash) != NGX_OK)
    {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "No connection of this "
                                              "browser waits for a "
                                              "confirmation: nothing was "
                                              "stored.", NULL);
    }

    rc = ngx_http_sf_oauth_store_lease_connect(cred);

    if (rc != NGX_OK) {
        return ngx_http_sf_oauth_connect_page(r,
                                              NGX_HTTP_SERVICE_UNAVAILABLE,
                                              "A refresh is running",
                                              "A token refresh of this "
                                              "credential is running: "
                                              "confirm again in a moment.",
                                              NULL);
    }

    copy = ngx_pcalloc(r->pool, sizeof(ngx_http_sf_oauth_pending_t));
    if (copy == NULL) {
        ngx_http_sf_oauth_store_release(cred);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sh = ngx_http_sf_oauth_connect_sh(r, &shpool);
    found = 0;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < NGX_HTTP_SF_OAUTH_CONNECT_PENDING; i++) {
        pe = &sh->pending[i];

        if (pe->in_use && pe->confirm
            && ngx_time() - pe->created <= NGX_HTTP_SF_OAUTH_CONNECT_TTL
            && pe->name_len == cred->name.len
            && ngx_memcmp(pe->name, cred->name.data, cred->name.len) == 0
            && CRYPTO_memcmp(pe->cookie, hash, 32) == 0)
        {
            ngx_memcpy(copy, pe, sizeof(ngx_http_sf_oauth_pending_t));
            ngx_explicit_memzero(pe, sizeof(ngx_http_sf_oauth_pending_t));
            found = 1;
            break;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (!found) {
        ngx_http_sf_oauth_store_release(cred);

        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Bad request",
                                              "No connection of this "
                                              "browser waits for a "
                                              "confirmation (or it "
                                              "expired): nothing was "
                                              "stored.", NULL);
    }

    ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
    tok.ok = 1;
    tok.duration = 1;
    tok.issued_at = copy->issued_at;

    /* the pending entry's copy of what the exchange got */
    ngx_http_sf_oauth_str_point(tok.access_token, copy->token, copy->token_len);
    ngx_http_sf_oauth_str_point(tok.refresh_token, copy->refresh,
                                copy->refresh_len);
    ngx_http_sf_oauth_str_point(tok.instance_url, copy->instance_url,
                                copy->url_len);
    ngx_http_sf_oauth_str_point(tok.org_id, copy->org_id, copy->org_id_len);
    ngx_http_sf_oauth_str_point(tok.user_id, copy->user_id, copy->user_id_len);

    generation = ngx_http_sf_oauth_refresh_connected(cred, &tok);

    ngx_http_sf_oauth_connect_who(r, &addr, &user);
    ngx_http_sf_oauth_connect_audit(r->connection->log, cred, &tok,
                                    generation, &addr, &user);

    ngx_explicit_memzero(copy, sizeof(ngx_http_sf_oauth_pending_t));

    return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_OK, "Connected",
                                          "The credential is connected to "
                                          "the new user and org: requests "
                                          "use the new token now.",
                                          &cred->name);
}


/* the callback with an error from Salesforce: a page, nothing stored */

static ngx_int_t
ngx_http_sf_oauth_connect_denied(ngx_http_request_t *r, ngx_str_t *error,
    ngx_str_t *state)
{
    ngx_int_t                      rc;
    ngx_str_t                      redirect, origin;
    ngx_uint_t                     i, slot;
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_sf_oauth_pending_t   *pe;

    /* an error code is a word: anything else is not shown */

    for (i = 0; i < error->len; i++) {
        if (!((error->data[i] >= 'a' && error->data[i] <= 'z')
              || error->data[i] == '_' || error->data[i] == '-'))
        {
            break;
        }
    }

    if (i != error->len || error->len == 0 || error->len > 64) {
        ngx_str_set(error, "unknown");
    }

    ngx_str_null(&redirect);

    if (state->len) {
        /* the flow ends here: its state is taken, if it is this browser's */

        pe = ngx_pcalloc(r->pool, sizeof(ngx_http_sf_oauth_pending_t));
        if (pe == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_sf_oauth_connect_take(r, state, pe, &slot, &rc)
            != NGX_OK)
        {
            /* refused: its page was sent */
            return rc;
        }

        redirect.data = pe->redirect;
        redirect.len = pe->redirect_len;
        ngx_explicit_memzero(pe->verifier, sizeof(pe->verifier));
        ngx_http_sf_oauth_connect_spent(r, slot, pe->state, 0);
    }

    if ((error->len == 13 && ngx_strncmp(error->data, "access_denied", 13)
                             == 0)
        || (error->len == 13 && ngx_strncmp(error->data, "access-denied", 13)
                                == 0))
    {
        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_FORBIDDEN,
                                              "Login denied",
                                              "The login was denied at "
                                              "Salesforce: nothing was "
                                              "stored.  Connect again, and "
                                              "allow the access.", NULL);
    }

    if (error->len == 21
        && ngx_strncmp(error->data, "redirect_uri_mismatch", 21) == 0)
    {
        if (redirect.len == 0) {
            clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
            ngx_http_sf_oauth_connect_own_origin(r, &origin);

            redirect.len = origin.len + clcf->name.len
                           + sizeof("callback") - 1;
            redirect.data = ngx_pnalloc(r->pool, redirect.len);
            if (redirect.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_sprintf(redirect.data, "%V%Vcallback", &origin, &clcf->name);
        }

        return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                              "Callback URL not registered",
                                              "Salesforce does not know "
                                              "this callback URL: add it, "
                                              "exactly as here, to the "
                                              "connected app's (or external "
                                              "client app's) callback URLs, "
                                              "or set connect_url to one "
                                              "that is registered.",
                                              &redirect);
    }

    return ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                          "Not connected",
                                          "Salesforce answered the login "
                                          "with this error, and nothing "
                                          "was stored:", error);
}


/*
 * Takes the pending entry of "state" for this browser, once: NGX_OK with
 * a copy; otherwise NGX_DECLINED, the refusal's page was sent, and *sent
 * is what sending it returned, for the content handler to return.
 */

static ngx_int_t
ngx_http_sf_oauth_connect_take(ngx_http_request_t *r, ngx_str_t *state,
    ngx_http_sf_oauth_pending_t *copy, ngx_uint_t *slot, ngx_int_t *sent)
{
    u_char                           hash[32];
    ngx_int_t                        cookie;
    ngx_uint_t                       i, found, expired, foreign;
    ngx_slab_pool_t                 *shpool;
    ngx_http_sf_oauth_pending_t     *pe;
    ngx_http_sf_oauth_connect_sh_t  *sh;

    cookie = ngx_http_sf_oauth_connect_cookie(r, hash);

    sh = ngx_http_sf_oauth_connect_sh(r, &shpool);
    found = 0;
    expired = 0;
    foreign = 0;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < NGX_HTTP_SF_OAUTH_CONNECT_PENDING; i++) {
        pe = &sh->pending[i];

        if (!pe->in_use || pe->used || pe->confirm
            || state->len != NGX_HTTP_SF_OAUTH_CONNECT_STATE
            || CRYPTO_memcmp(pe->state, state->data,
                             NGX_HTTP_SF_OAUTH_CONNECT_STATE) != 0)
        {
            continue;
        }

        if (ngx_time() - pe->created > NGX_HTTP_SF_OAUTH_CONNECT_TTL) {
            ngx_explicit_memzero(pe, sizeof(ngx_http_sf_oauth_pending_t));
            expired = 1;
            break;
        }

        if (cookie != NGX_OK || CRYPTO_memcmp(pe->cookie, hash, 32) != 0) {
            foreign = 1;
            break;
        }

        /* the verifier stays until the exchange starts: see _spent() */
        pe->used = 1;
        ngx_memcpy(copy, pe, sizeof(ngx_http_sf_oauth_pending_t));
        *slot = i;
        found = 1;
        break;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (found) {
        return NGX_OK;
    }

    if (foreign) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "sf_oauth: a callback without the cookie of its "
                      "connection was refused");

        *sent = ngx_http_sf_oauth_connect_page(r, NGX_HTTP_FORBIDDEN,
                                              "Forbidden",
                                              "This callback does not come "
                                              "with the browser that "
                                              "started the connection (its "
                                              "cookie is missing): nothing "
                                              "was stored.  Start again "
                                              "from the console, in one "
                                              "browser.", NULL);
        return NGX_DECLINED;
    }

    *sent = ngx_http_sf_oauth_connect_page(r, NGX_HTTP_BAD_REQUEST,
                                          "Bad request",
                                          expired
                                          ? "This connection expired (10 "
                                            "minutes): nothing was stored.  "
                                            "Start again from the console."
                                          : "This callback's state is "
                                            "unknown or was used already: "
                                            "nothing was stored.  Start "
                                            "again from the console.",
                                          NULL);
    return NGX_DECLINED;
}


/*
 * After take(): the entry's verifier is wiped (its exchange started, or
 * the flow ended), or with "give_back" the entry is the flow's again.
 */

static void
ngx_http_sf_oauth_connect_spent(ngx_http_request_t *r, ngx_uint_t slot,
    u_char *state, ngx_uint_t give_back)
{
    ngx_slab_pool_t                 *shpool;
    ngx_http_sf_oauth_pending_t     *pe;
    ngx_http_sf_oauth_connect_sh_t  *sh;

    sh = ngx_http_sf_oauth_connect_sh(r, &shpool);
    pe = &sh->pending[slot];

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_memcmp(pe->state, state, NGX_HTTP_SF_OAUTH_CONNECT_STATE) == 0) {
        if (give_back) {
            pe->used = 0;

        } else {
            ngx_explicit_memzero(pe->verifier, sizeof(pe->verifier));
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * Whether a POST comes from a page of this origin: Sec-Fetch-Site
 * same-origin when the browser sends it, else an Origin that is this
 * request's own scheme://host, or "null" (a page with Referrer-Policy
 * no-referrer, as the console's).
 */

static ngx_int_t
ngx_http_sf_oauth_connect_same_site(ngx_http_request_t *r)
{
    ngx_str_t         own;
    ngx_table_elt_t  *site, *origin;

    site = ngx_http_sf_oauth_connect_header(r, "sec-fetch-site");
    origin = ngx_http_sf_oauth_connect_header(r, "origin");

    if (site) {
        if (site->value.len != 11
            || ngx_strncasecmp(site->value.data, (u_char *) "same-origin", 11)
               != 0)
        {
            return NGX_DECLINED;
        }
    }

    if (origin == NULL) {
        return site ? NGX_OK : NGX_DECLINED;
    }

    if (origin->value.len == 4
        && ngx_strncmp(origin->value.data, "null", 4) == 0)
    {
        return NGX_OK;
    }

    ngx_http_sf_oauth_connect_own_origin(r, &own);

    if (origin->value.len == own.len
        && ngx_strncasecmp(origin->value.data, own.data, own.len) == 0)
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* scheme://host of this request, as the browser named it */

static void
ngx_http_sf_oauth_connect_own_origin(ngx_http_request_t *r,
    ngx_str_t *origin)
{
    u_char     *p;
    ngx_str_t   host;

    if (r->headers_in.host) {
        host = r->headers_in.host->value;

    } else {
        host = r->headers_in.server;
    }

    origin->data = ngx_pnalloc(r->pool, sizeof("https://") - 1 + host.len);
    if (origin->data == NULL) {
        origin->len = 0;
        return;
    }

    p = origin->data;

#if (NGX_HTTP_SSL)
    if (r->connection->ssl) {
        p = ngx_cpymem(p, "https://", sizeof("https://") - 1);
    } else
#endif
    {
        p = ngx_cpymem(p, "http://", sizeof("http://") - 1);
    }

    p = ngx_cpymem(p, host.data, host.len);
    origin->len = p - origin->data;
}


/*
 * The console form's token for a credential ("connect" or "confirm"):
 * base64url of HMAC-SHA256 of the zone's key, 43 characters, valid this
 * hour and the next.  NULL: the console has no zone.
 */

ngx_int_t
ngx_http_sf_oauth_connect_form(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *token)
{
    u_char     mac[32];
    ngx_str_t  src;

    token->data = ngx_pnalloc(r->pool, 44);
    if (token->data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_sf_oauth_connect_form_token(r, "connect", name,
                                             ngx_time()
                                             / NGX_HTTP_SF_OAUTH_CONNECT_WINDOW,
                                             mac)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    src.data = mac;
    src.len = 32;
    ngx_encode_base64url(token, &src);

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_connect_form_token(ngx_http_request_t *r,
    const char *purpose, ngx_str_t *name, time_t window, u_char *dst)
{
    u_char                           msg[sizeof("confirm") + NGX_INT64_LEN
                                         + 1 + NGX_HTTP_SF_OAUTH_NAME_MAX];
    u_char                          *p;
    unsigned int                     n;
    ngx_slab_pool_t                 *shpool;
    ngx_http_sf_oauth_connect_sh_t  *sh;

    if (name->len > NGX_HTTP_SF_OAUTH_NAME_MAX) {
        return NGX_ERROR;
    }

    sh = ngx_http_sf_oauth_connect_sh(r, &shpool);

    p = ngx_sprintf(msg, "%s:%T:%V", purpose, window, name);

    n = 32;

    if (HMAC(EVP_sha256(), sh->key, sizeof(sh->key), msg, p - msg, dst, &n)
        == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* whether a form's token is this hour's or the last one's */

static ngx_int_t
ngx_http_sf_oauth_connect_form_ok(ngx_http_request_t *r, const char *purpose,
    ngx_str_t *name, ngx_str_t *token)
{
    u_char      mac[32], enc[44];
    time_t      window;
    ngx_str_t   src, dst;
    ngx_uint_t  i;

    if (token->len != 43) {
        return NGX_DECLINED;
    }

    window = ngx_time() / NGX_HTTP_SF_OAUTH_CONNECT_WINDOW;

    for (i = 0; i < 2; i++) {
        if (ngx_http_sf_oauth_connect_form_token(r, purpose, name,
                                                 window - i, mac)
            != NGX_OK)
        {
            return NGX_DECLINED;
        }

        src.data = mac;
        src.len = 32;
        dst.data = enc;
        ngx_encode_base64url(&dst, &src);

        if (CRYPTO_memcmp(enc, token->data, 43) == 0) {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* the SHA-256 of the flow's cookie, if the request has one */

static ngx_int_t
ngx_http_sf_oauth_connect_cookie(ngx_http_request_t *r, u_char *hash)
{
    ngx_uint_t                  key;
    ngx_http_variable_value_t  *vv;

    key = ngx_hash_key(ngx_http_sf_oauth_connect_cookie_var.data,
                       ngx_http_sf_oauth_connect_cookie_var.len);

    vv = ngx_http_get_variable(r, &ngx_http_sf_oauth_connect_cookie_var, key);

    if (vv == NULL || vv->not_found
        || vv->len != NGX_HTTP_SF_OAUTH_CONNECT_STATE)
    {
        return NGX_DECLINED;
    }

    ngx_http_sf_oauth_connect_sha256(hash, vv->data, vv->len);

    return NGX_OK;
}


/* the form's "credential" and "form" fields, from a small body in memory */

static ngx_int_t
ngx_http_sf_oauth_connect_body(ngx_http_request_t *r, ngx_str_t *credential,
    ngx_str_t *form)
{
    u_char       *p;
    size_t        len;
    ngx_str_t     body;
    ngx_chain_t  *cl;

    ngx_str_null(credential);
    ngx_str_null(form);

    if (r->request_body == NULL || r->request_body->temp_file) {
        return NGX_DECLINED;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file) {
            return NGX_DECLINED;
        }

        len += cl->buf->last - cl->buf->pos;
    }

    if (len == 0 || len > NGX_HTTP_SF_OAUTH_CONNECT_BODY_MAX) {
        return NGX_DECLINED;
    }

    body.data = ngx_pnalloc(r->pool, len);
    if (body.data == NULL) {
        return NGX_ERROR;
    }

    p = body.data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    body.len = len;

    ngx_http_sf_oauth_connect_field(&body, "credential", credential);
    ngx_http_sf_oauth_connect_field(&body, "form", form);

    if (credential->len == 0
        || credential->len > NGX_HTTP_SF_OAUTH_NAME_MAX)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* a field of an application/x-www-form-urlencoded body, unescaped */

static void
ngx_http_sf_oauth_connect_field(ngx_str_t *body, const char *name,
    ngx_str_t *value)
{
    u_char  *p, *end, *amp;
    size_t   n;

    n = ngx_strlen(name);
    p = body->data;
    end = body->data + body->len;

    while (p < end) {
        amp = ngx_strlchr(p, end, '&');
        if (amp == NULL) {
            amp = end;
        }

        if ((size_t) (amp - p) > n && p[n] == '='
            && ngx_strncmp(p, name, n) == 0)
        {
            value->data = p + n + 1;
            value->len = ngx_http_sf_oauth_connect_unescape(value->data,
                                                  amp - (p + n + 1));
            return;
        }

        p = amp + 1;
    }

    ngx_str_null(value);
}


/* form decoding in place: "+" is a space, %XX a byte */

static size_t
ngx_http_sf_oauth_connect_unescape(u_char *p, size_t len)
{
    u_char     *s, *d, *end;
    ngx_int_t   hi, lo;

    s = p;
    d = p;
    end = p + len;

    while (s < end) {

        if (*s == '+') {
            *d++ = ' ';
            s++;
            continue;
        }

        if (*s == '%' && end - s >= 3) {
            hi = ngx_hextoi(s + 1, 1);
            lo = ngx_hextoi(s + 2, 1);

            if (hi >= 0 && lo >= 0) {
                *d++ = (u_char) (hi * 16 + lo);
                s += 3;
                continue;
            }
        }

        *d++ = *s++;
    }

    return d - p;
}


/* percent-encoding of a query value: all but the unreserved characters */

static u_char *
ngx_http_sf_oauth_connect_escape(u_char *dst, u_char *src, size_t len)
{
    u_char         c;
    static u_char  hex[] = "0123456789ABCDEF";

    while (len--) {
        c = *src++;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9')
            || c == '-' || c == '.' || c == '_' || c == '~')
        {
            *dst++ = c;
            continue;
        }

        *dst++ = '%';
        *dst++ = hex[c >> 4];
        *dst++ = hex[c & 0xf];
    }

    return dst;
}


static void
ngx_http_sf_oauth_connect_random(u_char *dst, size_t n)
{
    if (RAND_bytes(dst, (int) n) != 1) {
        /* OpenSSL's CSPRNG does not fail once seeded; fail closed */
        ngx_log_error(NGX_LOG_EMERG, ngx_cycle->log, 0,
                      "sf_oauth: RAND_bytes() failed");
        ngx_memset(dst, 0, n);
        exit(2);
    }
}


static void
ngx_http_sf_oauth_connect_sha256(u_char *dst, u_char *src, size_t len)
{
    unsigned int  n;

    if (EVP_Digest(src, len, dst, &n, EVP_sha256(), NULL) != 1) {
        ngx_memset(dst, 0, 32);
    }
}


/* a request header by its lowercase name */

static ngx_table_elt_t *
ngx_http_sf_oauth_connect_header(ngx_http_request_t *r, const char *name)
{
    size_t            n;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    n = ngx_strlen(name);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == n
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, n) == 0)
        {
            return &h[i];
        }
    }
}


static ngx_int_t
ngx_http_sf_oauth_connect_add_header(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;
    h->lowcase_key = NULL;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    if (name[0] == 'L') {
        r->headers_out.location = h;
    }

    return NGX_OK;
}


/* the operator: the client's address, and $remote_user */

static void
ngx_http_sf_oauth_connect_who(ngx_http_request_t *r, ngx_str_t *addr,
    ngx_str_t *user)
{
    *addr = r->connection->addr_text;

    if (ngx_http_auth_basic_user(r) == NGX_OK) {
        *user = r->headers_in.user;

    } else {
        ngx_str_set(user, "-");
    }
}


/* the audit line of a connection stored */

static void
ngx_http_sf_oauth_connect_audit(ngx_log_t *log,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_token_t *tok,
    ngx_uint_t generation, ngx_str_t *addr, ngx_str_t *user)
{
    u_char  fp[NGX_HTTP_SF_OAUTH_FP_LEN];

    ngx_http_sf_oauth_redact_fingerprint(fp, tok->access_token.data,
                                         tok->access_token.len);

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "sf_oauth: credential \"%V\" connected from the console: "
                  "user %V, org %V, generation %ui, access token fp:%*s, "
                  "by client %V, remote user \"%V\"", &cred->name,
                  &tok->user_id, &tok->org_id, generation,
                  (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, fp, addr, user);
}


/*
 * A page of the flow: a title, a constant text, and a detail (escaped)
 * if any; a link back to the console.  A 303's page allows the form's
 * redirect to "detail", the authorize URL's origin.
 */

static ngx_int_t
ngx_http_sf_oauth_connect_page(ngx_http_request_t *r, ngx_uint_t status,
    const char *title, const char *text, ngx_str_t *detail)
{
    u_char                    *p;
    size_t                     len;
    ngx_buf_t                 *b;
    ngx_str_t                  t, *form_action;
    ngx_chain_t               *out;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    form_action = NULL;

    if (status == NGX_HTTP_SEE_OTHER) {
        form_action = detail;
        detail = NULL;
    }

    len = sizeof("<h1></h1>\n<p></p>\n<p><code></code></p>\n"
                 "<p><a href=\"\">Back to the console</a></p>\n") - 1
          + ngx_strlen(title) + ngx_strlen(text)
          + ngx_http_sf_oauth_page_escape_len(clcf->name.data,
                                              clcf->name.len)
          + (detail ? ngx_http_sf_oauth_page_escape_len(detail->data,
                                                         detail->len)
                    : 0);

    b = ngx_create_temp_buf(r->pool, len);
    out = ngx_alloc_chain_link(r->pool);
    if (b == NULL || out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the title and text are constants of this file: nothing to escape */
    p = ngx_sprintf(b->last, "<h1>%s</h1>\n<p>%s</p>\n", title, text);

    if (detail) {
        p = ngx_cpymem(p, "<p><code>", sizeof("<p><code>") - 1);
        p = ngx_http_sf_oauth_page_escape(p, detail->data, detail->len);
        p = ngx_cpymem(p, "</code></p>\n", sizeof("</code></p>\n") - 1);
    }

    p = ngx_cpymem(p, "<p><a href=\"", sizeof("<p><a href=\"") - 1);
    p = ngx_http_sf_oauth_page_escape(p, clcf->name.data, clcf->name.len);
    p = ngx_cpymem(p, "\">Back to the console</a></p>\n",
                   sizeof("\">Back to the console</a></p>\n") - 1);

    b->last = p;
    out->buf = b;
    out->next = NULL;

    t.data = (u_char *) title;
    t.len = ngx_strlen(title);

    return ngx_http_sf_oauth_page_send(r, status, &t, out, form_action);
}


/*
 * The console's Connect (or Reconnect, once the credential has a refresh
 * token) button of a refresh-token credential: a form that POSTs to
 * <console>connect with the credential and its form token.  An empty
 * string for the other grants, which need no login.
 */

ngx_int_t
ngx_http_sf_oauth_connect_button(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_str_t *html)
{
    u_char                    *p;
    ngx_str_t                  token;
    ngx_uint_t                 connected;
    ngx_http_sf_oauth_node_t  *copy;
    ngx_http_core_loc_conf_t  *clcf;

    ngx_str_null(html);

    if (cred->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH) {
        return NGX_OK;
    }

    if (ngx_http_sf_oauth_connect_form(r, &cred->name, &token) != NGX_OK) {
        return NGX_ERROR;
    }

    copy = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), r->connection->log);
    if (copy == NULL) {
        return NGX_ERROR;
    }

    ngx_http_sf_oauth_store_snapshot(cred, copy);
    connected = (copy->refresh_len != 0);
    ngx_explicit_memzero(copy, sizeof(ngx_http_sf_oauth_node_t));
    ngx_free(copy);

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    html->data = ngx_pnalloc(r->pool,
                     sizeof("<form method=\"post\" action=\"connect\">"
                            "<input type=\"hidden\" name=\"credential\" "
                            "value=\"\"><input type=\"hidden\" name=\"form\" "
                            "value=\"\"><button type=\"submit\">Reconnect"
                            "</button></form>") - 1
                     + ngx_http_sf_oauth_page_escape_len(clcf->name.data,
                                                         clcf->name.len)
                     + ngx_http_sf_oauth_page_escape_len(cred->name.data,
                                                         cred->name.len)
                     + token.len);
    if (html->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(html->data, "<form method=\"post\" action=\"",
                   sizeof("<form method=\"post\" action=\"") - 1);
    p = ngx_http_sf_oauth_page_escape(p, clcf->name.data, clcf->name.len);
    p = ngx_cpymem(p, "connect\"><input type=\"hidden\" name=\"credential\" "
                   "value=\"",
                   sizeof("connect\"><input type=\"hidden\" "
                          "name=\"credential\" value=\"") - 1);
    p = ngx_http_sf_oauth_page_escape(p, cred->name.data, cred->name.len);
    p = ngx_cpymem(p, "\"><input type=\"hidden\" name=\"form\" value=\"",
                   sizeof("\"><input type=\"hidden\" name=\"form\" "
                          "value=\"") - 1);
    p = ngx_cpymem(p, token.data, token.len);
    p = ngx_sprintf(p, "\"><button type=\"submit\">%s</button></form>",
                    connected ? "Reconnect" : "Connect");

    html->len = p - html->data;

    return NGX_OK;
}


/*
 * The console page's form-action origins: those of the authorize URLs of
 * its Connect forms (Chrome applies form-action to the 303 that follows
 * the POST), one space between two; empty without a refresh-token
 * credential.
 */

ngx_int_t
ngx_http_sf_oauth_connect_form_action(ngx_http_request_t *r,
    ngx_str_t *origins)
{
    u_char                          *p;
    size_t                           len;
    ngx_uint_t                       i, j, seen;
    ngx_http_sf_oauth_cred_t       **cred;
    ngx_http_sf_oauth_main_conf_t   *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    len = 0;

    for (i = 0; i < smcf->creds.nelts; i++) {
        len += cred[i]->token_origin.len + 1;
    }

    ngx_str_null(origins);

    origins->data = ngx_pnalloc(r->pool, len + 1);
    if (origins->data == NULL) {
        return NGX_ERROR;
    }

    p = origins->data;

    for (i = 0; i < smcf->creds.nelts; i++) {

        if (cred[i]->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH) {
            continue;
        }

        seen = 0;

        for (j = 0; j < i; j++) {
            if (cred[j]->grant == NGX_HTTP_SF_OAUTH_GRANT_REFRESH
                && cred[j]->token_origin.len == cred[i]->token_origin.len
                && ngx_strncasecmp(cred[j]->token_origin.data,
                                   cred[i]->token_origin.data,
                                   cred[i]->token_origin.len)
                   == 0)
            {
                seen = 1;
                break;
            }
        }

        if (seen) {
            continue;
        }

        if (p != origins->data) {
            *p++ = ' ';
        }

        p = ngx_cpymem(p, cred[i]->token_origin.data,
                       cred[i]->token_origin.len);
    }

    origins->len = p - origins->data;

    return NGX_OK;
}


/* the value of each "name" argument in s, made asterisks of its length */

static void
ngx_http_sf_oauth_connect_mask(ngx_str_t *s, const char *name)
{
    u_char  *p, *end;
    size_t   n;

    n = ngx_strlen(name);
    p = s->data;
    end = s->data + s->len;

    while (p && p < end) {
        p = ngx_strlcasestrn(p, end, (u_char *) name, n - 1);
        if (p == NULL) {
            return;
        }

        if (p == s->data || p[-1] == '?' || p[-1] == '&') {
            for (p += n; p < end && *p != '&' && *p != ' ' && *p != '#';
                 p++)
            {
                *p = '*';
            }

        } else {
            p += n;
        }
    }
}
