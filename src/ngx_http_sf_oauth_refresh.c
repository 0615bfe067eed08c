
/*
 * A token request's life, from the lease to the waiters woken.
 *
 * Whoever holds a credential's lease (a request that found no token, the
 * 401 replay, the refresh ahead of expiry) hands it here.  The refresh
 * chooses the grant, builds the form, starts the transfer on the HTTP
 * client and hears its answer through a completion callback.  It stores
 * the outcome in the zone and the state file, tells the log redaction the
 * secrets it handled, says what happened in the error log, and wakes this
 * worker's waiters.  Waiters in other workers see the zone change on their
 * next poll.
 *
 * Three kinds of transfers run from here, each with its own callback:
 *
 *   - the grant (refresh token, JWT bearer, client credentials), under
 *     the lease;
 *   - the introspection of the access token, under the lease, for the
 *     refresh ahead of expiry: it may end in a grant;
 *   - the identity service, for SOAP login() answers, under no lease;
 *   - the web server flow's code exchange (grant_type=authorization_code)
 *     for a connection from the console, under the lease: its tokens are
 *     stored as a rotation's are (ngx_http_sf_oauth_refresh_connected).
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_refresh_begin(
    ngx_http_sf_oauth_cred_t *cred, ngx_str_t *secret);
static void ngx_http_sf_oauth_refresh_acquired(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t answer, ngx_http_sf_oauth_node_t *rec, ngx_uint_t generation);
static ngx_int_t ngx_http_sf_oauth_refresh_alone(
    ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_refresh_refuse(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *error);
static void ngx_http_sf_oauth_refresh_written(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t answer, ngx_http_sf_oauth_node_t *rec, ngx_uint_t generation);
static ngx_int_t ngx_http_sf_oauth_refresh_grant(
    ngx_http_sf_oauth_cred_t *cred, ngx_str_t *secret, ngx_pool_t *pool);
static ngx_int_t ngx_http_sf_oauth_refresh_introspect(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_lookup_t *lk);
static void ngx_http_sf_oauth_refresh_call(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_call_t *call, ngx_str_t *url, char *action,
    ngx_http_sf_oauth_done_pt done);
static void ngx_http_sf_oauth_refresh_done(ngx_http_sf_oauth_answer_t *answer,
    void *data);
static void ngx_http_sf_oauth_refresh_stored(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok);
static void ngx_http_sf_oauth_refresh_introspected(
    ngx_http_sf_oauth_answer_t *answer, void *data);
static void ngx_http_sf_oauth_refresh_identified(
    ngx_http_sf_oauth_answer_t *answer, void *data);
static ngx_int_t ngx_http_sf_oauth_refresh_answer(
    ngx_http_sf_oauth_answer_t *answer, ngx_pool_t *pool,
    ngx_http_sf_oauth_token_t *tok);
static void ngx_http_sf_oauth_refresh_wake(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_refresh_exchanged(
    ngx_http_sf_oauth_answer_t *answer, void *data);


/* a code exchange in flight: whom to tell */
typedef struct {
    ngx_http_sf_oauth_cred_t        *cred;
    ngx_http_sf_oauth_exchanged_pt   handler;
    void                            *data;
} ngx_http_sf_oauth_refresh_exchange_t;


static ngx_str_t  ngx_http_sf_oauth_refresh_error_start =
    ngx_string("the token request could not be started");


static ngx_str_t  ngx_http_sf_oauth_grant_types[] = {
    ngx_string("refresh_token"),
    ngx_string("urn:ietf:params:oauth:grant-type:jwt-bearer"),
    ngx_string("client_credentials")
};


/*
 * Starts the token request of the lease that lk holds: the credential's
 * grant, or with lk->introspect the introspection of lk->secret.  The
 * secret in lk is wiped.  On NGX_ERROR no request went out, and the
 * failure is recorded so that others back off.
 */

ngx_int_t
ngx_http_sf_oauth_refresh_start(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t  rc;

    /* the secret sent may come back in an error: the redaction knows it */
    ngx_http_sf_oauth_redact_remember(cred, lk->secret.data, lk->secret.len);

    if (lk->introspect) {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the lease is this "
                       "process's (%P): introspecting the token of "
                       "generation %ui", &cred->name, ngx_pid,
                       lk->generation);

        rc = ngx_http_sf_oauth_refresh_introspect(cred, lk);

        ngx_explicit_memzero(lk->secret.data, lk->secret.len);

        if (rc != NGX_OK) {
            ngx_http_sf_oauth_store_release(cred);
        }

        return rc;
    }

    /* a lease for a grant: lk tells the fleet generation, not the token's */

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": the lease is this "
                   "process's (%P): %s", &cred->name, ngx_pid,
                   ngx_http_sf_oauth_fleet_on(cred) ? "asking the fleet first"
                                                    : "refreshing");

    if (!ngx_http_sf_oauth_fleet_on(cred)) {
        rc = ngx_http_sf_oauth_refresh_begin(cred, &lk->secret);

        ngx_explicit_memzero(lk->secret.data, lk->secret.len);

        return rc;
    }

    /*
     * The fleet: the node's refresh token is kept for when Redis has none
     * newer, and the fleet is asked first.
     */

    cred->rt.fleet_secret_len = ngx_min(lk->secret.len,
                                        NGX_HTTP_SF_OAUTH_REFRESH_MAX);
    ngx_memcpy(cred->rt.fleet_secret, lk->secret.data,
               cred->rt.fleet_secret_len);
    ngx_explicit_memzero(lk->secret.data, lk->secret.len);

    cred->rt.fleet_alone = 0;

    /* the fleet answers DOWN when Redis is unreachable or refuses */

    ngx_http_sf_oauth_fleet_acquire(cred, lk->fleet_generation,
                                    lk->fleet_unsynced,
                                    ngx_http_sf_oauth_refresh_acquired);

    return NGX_OK;
}


/*
 * Starts the grant with "secret" (a refresh token, when the grant sends
 * one).  On NGX_ERROR no request went out, and the failure is recorded so
 * that others back off.
 */

static ngx_int_t
ngx_http_sf_oauth_refresh_begin(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *secret)
{
    ngx_int_t                  rc;
    ngx_pool_t                *pool;
    ngx_http_sf_oauth_token_t  tok;

    ngx_http_sf_oauth_store_count(cred,
                                  NGX_HTTP_SF_OAUTH_COUNT_TOKEN_REQUESTS);

    pool = ngx_create_pool(1024, ngx_cycle->log);

    rc = (pool == NULL) ? NGX_ERROR
                        : ngx_http_sf_oauth_refresh_grant(cred, secret, pool);

    if (pool) {
        ngx_destroy_pool(pool);
    }

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
    tok.error = ngx_http_sf_oauth_refresh_error_start;
    tok.error_class = NGX_HTTP_SF_OAUTH_TRANSIENT;

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": %V", &cred->name, &tok.error);

    ngx_http_sf_oauth_store_result(cred, &tok);

    return NGX_ERROR;
}


/* what the fleet says to a worker that holds its node's lease */

static void
ngx_http_sf_oauth_refresh_acquired(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t answer, ngx_http_sf_oauth_node_t *rec, ngx_uint_t generation)
{
    ngx_str_t  secret;

    switch (answer) {

    case NGX_HTTP_SF_OAUTH_FLEET_NEWER:
        /* another node refreshed: its token is in the zone now */

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": another node "
                       "refreshed (fleet generation %ui): no token request, "
                       "the lease released", &cred->name, generation);

        ngx_http_sf_oauth_store_release(cred);
        break;

    case NGX_HTTP_SF_OAUTH_FLEET_LEASE:

        /* the fleet's newest refresh token, which may have rotated */

        if (rec && rec->refresh_len
            && cred->grant == NGX_HTTP_SF_OAUTH_GRANT_REFRESH)
        {
            secret.data = rec->refresh;
            secret.len = rec->refresh_len;

        } else {
            secret.data = cred->rt.fleet_secret;
            secret.len = cred->rt.fleet_secret_len;
        }

        ngx_http_sf_oauth_redact_remember(cred, secret.data, secret.len);

        if (ngx_http_sf_oauth_refresh_begin(cred, &secret) == NGX_OK) {
            return;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the token request "
                       "did not start: the fleet's lease goes back",
                       &cred->name);

        ngx_http_sf_oauth_fleet_release(cred);
        break;

    case NGX_HTTP_SF_OAUTH_FLEET_HELD:
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": another node's refresh "
                      "did not end within the timeout; asking again with "
                      "the next request", &cred->name);

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the lease released",
                       &cred->name);

        ngx_http_sf_oauth_store_release(cred);
        break;

    case NGX_HTTP_SF_OAUTH_FLEET_KEY:
        /* the fleet's record is another key's: logged by the fleet */
        ngx_http_sf_oauth_refresh_refuse(cred,
                                         &ngx_http_sf_oauth_fleet_key_error);
        return;

    default: /* NGX_HTTP_SF_OAUTH_FLEET_DOWN */
        (void) ngx_http_sf_oauth_refresh_alone(cred);
        return;
    }

    ngx_http_sf_oauth_refresh_wake(cred);
}


/*
 * Redis is unreachable, or answers the lease script with an error (OOM,
 * READONLY...): the node refreshes on its own (redis_down local),
 * and the token is written back when Redis is there again; or it fails
 * (redis_down fail).  Either is logged once per outage and node.  A node
 * whose key cannot read the fleet's record fails, whatever redis_down says:
 * its refresh token may have been rotated out.
 */

static ngx_int_t
ngx_http_sf_oauth_refresh_alone(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_str_t                   secret;
    ngx_http_sf_oauth_zone_t   *zone;

    zone = cred->shm_zone->data;

    if (ngx_http_sf_oauth_store_fleet_key_mismatch(cred)) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the fleet is down, "
                       "and its key differs: no token request",
                       &cred->name);

        ngx_http_sf_oauth_refresh_refuse(cred,
                                         &ngx_http_sf_oauth_fleet_key_error);
        return NGX_OK;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": the fleet is down: "
                   "redis_down %s", &cred->name,
                   zone->redis->down == NGX_HTTP_SF_OAUTH_DOWN_FAIL
                   ? "fail, no token request"
                   : "local, this node refreshes on its own");

    if (ngx_http_sf_oauth_store_fleet_outage(cred, 1) == 0) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": Redis \"%V\" is "
                      "unreachable or refuses commands: %s; the fleet is "
                      "not coordinated until it is back", &cred->name,
                      &zone->redis->name,
                      zone->redis->down == NGX_HTTP_SF_OAUTH_DOWN_FAIL
                      ? "requests that need a new token fail "
                        "(redis_down fail)"
                      : "this node refreshes on its own");
    }

    if (zone->redis->down == NGX_HTTP_SF_OAUTH_DOWN_FAIL) {
        ngx_http_sf_oauth_refresh_refuse(cred, &ngx_http_sf_oauth_fleet_down);
        return NGX_OK;
    }

    cred->rt.fleet_alone = 1;

    secret.data = cred->rt.fleet_secret;
    secret.len = cred->rt.fleet_secret_len;

    if (ngx_http_sf_oauth_refresh_begin(cred, &secret) != NGX_OK) {
        ngx_http_sf_oauth_refresh_wake(cred);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * No token request may be made: the failure is stored as a transient one,
 * with its backoff, and the waiters get it
 */

static void
ngx_http_sf_oauth_refresh_refuse(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *error)
{
    ngx_http_sf_oauth_token_t  tok;

    ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
    tok.error = *error;
    tok.error_class = NGX_HTTP_SF_OAUTH_TRANSIENT;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": no token request may be "
                   "made: stored as a transient failure", &cred->name);

    ngx_http_sf_oauth_store_result(cred, &tok);
    ngx_http_sf_oauth_refresh_wake(cred);
}


/* the fleet's answer to the write-back of a new token */

static void
ngx_http_sf_oauth_refresh_written(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t answer, ngx_http_sf_oauth_node_t *rec, ngx_uint_t generation)
{
    if (answer == NGX_HTTP_SF_OAUTH_FLEET_DOWN) {
        /* written back when Redis is reachable again */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the new token is "
                       "written to the fleet when Redis is back",
                       &cred->name);

        ngx_http_sf_oauth_store_fleet_mark(cred, 1);
    }
}


/* the grant's form, and the transfer: its secrets are wiped by the caller */

static ngx_int_t
ngx_http_sf_oauth_refresh_grant(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *secret, ngx_pool_t *pool)
{
    ngx_int_t                  rc;
    ngx_str_t                  jwt;
    ngx_uint_t                 n;
    ngx_keyval_t               form[4];
    ngx_http_sf_oauth_call_t   call;

    ngx_str_set(&form[0].key, "grant_type");
    form[0].value = ngx_http_sf_oauth_grant_types[cred->grant];
    n = 1;

    ngx_str_null(&jwt);

    switch (cred->grant) {

    case NGX_HTTP_SF_OAUTH_GRANT_JWT:

        if (ngx_http_sf_oauth_jwt_assertion(cred, pool, &jwt) != NGX_OK) {
            return NGX_ERROR;
        }

        /* a signed assertion is a secret until it expires */
        ngx_http_sf_oauth_redact_remember(cred, jwt.data, jwt.len);

        ngx_str_set(&form[n].key, "assertion");
        form[n++].value = jwt;
        break;

    default: /* the refresh token and the client credentials grants */

        ngx_str_set(&form[n].key, "client_id");
        form[n++].value = cred->client_id;

        if (cred->client_secret.len) {
            ngx_str_set(&form[n].key, "client_secret");
            form[n++].value = cred->client_secret;
        }

        if (cred->grant == NGX_HTTP_SF_OAUTH_GRANT_REFRESH) {
            ngx_str_set(&form[n].key, "refresh_token");
            form[n++].value = *secret;
        }
    }

    call.form = form;
    call.nform = n;
    call.bearer = NULL;

    ngx_http_sf_oauth_refresh_call(cred, &call, &cred->token_url,
                                   "requesting a token from the token "
                                   "endpoint",
                                   ngx_http_sf_oauth_refresh_done);

    cred->rt.transfer = ngx_http_sf_oauth_client_start(&call);
    cred->rt.transfer_start = ngx_current_msec;

    rc = (cred->rt.transfer == NULL) ? NGX_ERROR : NGX_OK;

    /* the client keeps a copy of the form */
    ngx_explicit_memzero(jwt.data, jwt.len);

    if (rc == NGX_OK) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": token request to \"%V\"",
                       &cred->name, &cred->token_url);
    }

    return rc;
}


static ngx_int_t
ngx_http_sf_oauth_refresh_introspect(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_keyval_t              form[4];
    ngx_http_sf_oauth_call_t  call;

    ngx_str_set(&form[0].key, "token_type_hint");
    ngx_str_set(&form[0].value, "access_token");
    ngx_str_set(&form[1].key, "client_id");
    form[1].value = cred->client_id;
    ngx_str_set(&form[2].key, "client_secret");
    form[2].value = cred->client_secret;
    ngx_str_set(&form[3].key, "token");
    form[3].value = lk->secret;

    call.form = form;
    call.nform = 4;
    call.bearer = NULL;

    ngx_http_sf_oauth_refresh_call(cred, &call, &cred->introspect_url,
                                   "introspecting the access token",
                                   ngx_http_sf_oauth_refresh_introspected);

    cred->rt.transfer = ngx_http_sf_oauth_client_start(&call);
    if (cred->rt.transfer == NULL) {
        return NGX_ERROR;
    }

    cred->rt.introspected = lk->generation;

    return NGX_OK;
}


/* what every transfer of a credential's has: its URL, TLS and timeout */

static void
ngx_http_sf_oauth_refresh_call(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_call_t *call, ngx_str_t *url, char *action,
    ngx_http_sf_oauth_done_pt done)
{
    call->url = url;
    call->action = action;
    call->timeout = cred->timeout;
    call->ca_file = &cred->ca_file;
    call->ssl_verify = cred->ssl_verify;
    call->done = done;
    call->data = cred;
}


/* the grant's answer */

static void
ngx_http_sf_oauth_refresh_done(ngx_http_sf_oauth_answer_t *answer,
    void *data)
{
    ngx_http_sf_oauth_cred_t *cred = data;

    ngx_pool_t                *pool;
    ngx_http_sf_oauth_token_t  tok;

    cred->rt.transfer = NULL;

    if (answer->abandoned) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": token request "
                      "abandoned %s", &cred->name, answer->error);

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the lease released, "
                       "for another process to take", &cred->name);

        ngx_http_sf_oauth_store_count(cred, NGX_HTTP_SF_OAUTH_COUNT_DROPPED);
        ngx_http_sf_oauth_fleet_release(cred);
        ngx_http_sf_oauth_store_release(cred);
        return;
    }

    pool = ngx_create_pool(4096, ngx_cycle->log);
    if (pool == NULL) {
        ngx_http_sf_oauth_fleet_release(cred);
        ngx_http_sf_oauth_store_release(cred);
        ngx_http_sf_oauth_refresh_wake(cred);
        return;
    }

    if (ngx_http_sf_oauth_refresh_answer(answer, pool, &tok) == NGX_OK) {
        ngx_http_sf_oauth_parse_response(pool, (long) answer->status,
                                         answer->body, answer->len, &tok);
    }

    /* for the metrics; at least 1 ms: 0 is for no request at all */
    tok.duration = ngx_max(ngx_current_msec - cred->rt.transfer_start, 1);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": the token request "
                   "answered in %M ms, HTTP %ui: %s", &cred->name,
                   tok.duration, answer->status,
                   tok.ok ? "a token"
                   : tok.error_class == NGX_HTTP_SF_OAUTH_OPERATOR
                     ? "a failure for the operator to fix (held)"
                   : tok.error_class == NGX_HTTP_SF_OAUTH_BUSY
                     ? "the refresh token is busy (retried soon)"
                     : "a transient failure (backed off)");

    ngx_http_sf_oauth_refresh_stored(cred, &tok);

    if (tok.ok) {
        ngx_explicit_memzero(tok.access_token.data, tok.access_token.len);
        ngx_explicit_memzero(tok.refresh_token.data, tok.refresh_token.len);
    }

    ngx_destroy_pool(pool);

    ngx_http_sf_oauth_refresh_wake(cred);
}


/*
 * The outcome of the grant: remembered for the redaction, logged, stored
 * in the zone and the state file; the first token of a SOAP login()
 * credential has its user read from the identity service.
 */

static void
ngx_http_sf_oauth_refresh_stored(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok)
{
    u_char      fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    ngx_uint_t  level;

    if (ngx_http_sf_oauth_store_changed(cred)) {

        /*
         * A reload changed the credential while the request was in
         * flight: its answer is for a configuration that is gone, so it
         * is neither stored nor retried, and an error of it is not the
         * new configuration's to fix.  The new workers get the token for
         * this worker's waiting requests (ngx_http_sf_oauth_store_handover).
         */

        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the reload changed the "
                      "credential while its token request was in flight: "
                      "the answer (%s) is dropped, and the new worker "
                      "processes get the token", &cred->name,
                      tok->ok ? "a token" : "an error");

        ngx_http_sf_oauth_fleet_release(cred);
        ngx_http_sf_oauth_store_result(cred, tok);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": the outcome is stored, "
                   "and the lease of process %P released", &cred->name,
                   ngx_pid);

    if (!tok->ok) {
        /* an error text is built from the endpoint's answer: scrub it */
        tok->error.len = ngx_http_sf_oauth_redact(cred, tok->error.data,
                                                  tok->error.len,
                                                  tok->error.len);

        /* "already being processed" is retried at once: no error yet */
        level = (tok->error_class == NGX_HTTP_SF_OAUTH_BUSY)
                ? NGX_LOG_WARN : NGX_LOG_ERR;

        ngx_log_error(level, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": %V; %V",
                      &cred->name, &tok->error, &tok->hint);

        ngx_http_sf_oauth_fleet_release(cred);
        ngx_http_sf_oauth_store_result(cred, tok);
        return;
    }

    ngx_http_sf_oauth_redact_remember(cred, tok->access_token.data,
                                      tok->access_token.len);
    ngx_http_sf_oauth_redact_remember(cred, tok->refresh_token.data,
                                      tok->refresh_token.len);

    ngx_http_sf_oauth_redact_fingerprint(fp, tok->access_token.data,
                                                tok->access_token.len);

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": new access token "
                  "fp:%*s for \"%V\"%s", &cred->name,
                  (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, fp,
                  &tok->instance_url,
                  tok->refresh_token.len ? ", refresh token rotated" : "");

    ngx_http_sf_oauth_store_result(cred, tok);

    ngx_http_sf_oauth_state_save(cred);

    if (ngx_http_sf_oauth_fleet_on(cred)) {

        if (cred->rt.fleet_alone) {
            /* got while Redis was unreachable: written back when it is not */
            ngx_http_sf_oauth_store_fleet_mark(cred, 1);

        } else {
            ngx_http_sf_oauth_fleet_store(cred,
                                          ngx_http_sf_oauth_refresh_written);
        }
    }

    if (cred->soap_login && tok->org_id.len
        && !ngx_http_sf_oauth_store_identity_known(cred))
    {
        /* SOAP login() answers tell who the user is: read it once */
        (void) ngx_http_sf_oauth_refresh_identity(cred, &tok->org_id,
                                                  &tok->user_id,
                                                  &tok->access_token);
    }
}


/* the introspection's answer: the token's expiry, or a refresh now */

static void
ngx_http_sf_oauth_refresh_introspected(ngx_http_sf_oauth_answer_t *answer,
    void *data)
{
    ngx_http_sf_oauth_cred_t *cred = data;

    ngx_pool_t                  *pool;
    ngx_http_sf_oauth_token_t    tok;
    ngx_http_sf_oauth_lookup_t   lk;

    cred->rt.transfer = NULL;

    if (answer->abandoned) {
        ngx_http_sf_oauth_store_release(cred);
        return;
    }

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        ngx_http_sf_oauth_store_release(cred);
        return;
    }

    if (ngx_http_sf_oauth_refresh_answer(answer, pool, &tok) == NGX_OK) {
        ngx_http_sf_oauth_parse_introspect(pool, (long) answer->status,
                                           answer->body, answer->len, &tok);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": introspection of "
                   "generation %ui: %s", &cred->name, cred->rt.introspected,
                   !tok.ok ? "failed" : tok.active ? "active" : "not active");

    if (!tok.ok) {
        /* the parser echoes no text of the endpoint's; redact all the same */
        tok.error.len = ngx_http_sf_oauth_redact(cred, tok.error.data,
                                                 tok.error.len,
                                                 tok.error.len);

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": token introspection "
                      "failed: %V; asking again in 30 s", &cred->name,
                      &tok.error);
    }

    if (ngx_http_sf_oauth_store_introspected(cred, cred->rt.introspected, &tok,
                                             pool, &lk)
        == NGX_HTTP_SF_OAUTH_GOT_LEASE)
    {
        if (tok.active) {
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "sf_oauth: credential \"%V\": refreshing the token "
                          "ahead of its expiry in %T s", &cred->name,
                          tok.exp - ngx_time());

        } else {
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "sf_oauth: credential \"%V\": Salesforce says the "
                          "token is no longer active: refreshing",
                          &cred->name);
        }

        (void) ngx_http_sf_oauth_refresh_start(cred, &lk);
    }

    ngx_destroy_pool(pool);
}


/*
 * A transfer that brought no body to parse: too large, a transport error,
 * or a redirect.  Returns NGX_OK when the body is to be parsed.
 */

static ngx_int_t
ngx_http_sf_oauth_refresh_answer(ngx_http_sf_oauth_answer_t *answer,
    ngx_pool_t *pool, ngx_http_sf_oauth_token_t *tok)
{
    ngx_memzero(tok, sizeof(ngx_http_sf_oauth_token_t));

    if (answer->too_large) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the token endpoint does not answer "
                                     "like Salesforce",
                                     "the token response body is larger "
                                     "than %d bytes",
                                     NGX_HTTP_SF_OAUTH_BODY_MAX);
        return NGX_DECLINED;
    }

    if (answer->error) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     answer->timed_out
                                     ? "the token endpoint is slow or "
                                       "unreachable; the module retries "
                                       "with backoff"
                                     : "check that token_url is reachable "
                                       "from this host; the module "
                                       "retries with backoff",
                                     "token request failed: %s",
                                     answer->error);
        return NGX_DECLINED;
    }

    if (answer->status >= 300 && answer->status < 400) {
        /* an untrusted URL: the parser echoes a known-safe part of it */
        ngx_http_sf_oauth_parse_redirect(pool, (long) answer->status,
                                         answer->location, tok);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* this worker's waiters look at the zone again, at once */

static void
ngx_http_sf_oauth_refresh_wake(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_queue_t                 *q;
    ngx_http_sf_oauth_waiter_t  *w;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": waking the waiting "
                   "requests of process %P", &cred->name, ngx_pid);

    for (q = ngx_queue_head(&cred->rt.waiters);
         q != ngx_queue_sentinel(&cred->rt.waiters);
         q = ngx_queue_next(q))
    {
        w = ngx_queue_data(q, ngx_http_sf_oauth_waiter_t, queue);
        ngx_http_sf_oauth_timer_post(&w->event);
    }
}


/*
 * Reads the identity service, the "id" URL of a token answer, on the token
 * endpoint's host: ORIGIN/id/ORG_ID/USER_ID, with the access token.  What
 * it says of the user goes to the zone, for SOAP login() emulation.  It
 * runs beside the token requests, under no lease, at most one at a time
 * per credential and worker; a failure costs only the names in userInfo.
 */

ngx_int_t
ngx_http_sf_oauth_refresh_identity(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *org_id, ngx_str_t *user_id, ngx_str_t *token)
{
    ngx_str_t                  url;
    ngx_http_sf_oauth_call_t   call;

    if (cred->rt.identity) {
        return NGX_OK;
    }

    if (user_id->len > NGX_HTTP_SF_OAUTH_ID_MAX) {
        return NGX_ERROR;
    }

    url.len = cred->token_origin.len + sizeof("/id//") - 1
              + org_id->len + user_id->len;
    url.data = ngx_alloc(url.len + 1, ngx_cycle->log);
    if (url.data == NULL) {
        return NGX_ERROR;
    }

    *ngx_sprintf(url.data, "%V/id/%V/%V", &cred->token_origin, org_id,
                 user_id)
        = '\0';

    call.form = NULL;
    call.nform = 0;
    call.bearer = token;

    ngx_http_sf_oauth_refresh_call(cred, &call, &url,
                                   "reading the user's identity from the "
                                   "identity service",
                                   ngx_http_sf_oauth_refresh_identified);

    cred->rt.identity = ngx_http_sf_oauth_client_start(&call);

    if (cred->rt.identity) {
        cred->rt.identity_tried = ngx_current_msec;
        cred->rt.identity_user_len = ngx_cpymem(cred->rt.identity_user,
                                                user_id->data, user_id->len)
                                  - cred->rt.identity_user;

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": identity request to "
                       "\"%V\"", &cred->name, &url);
    }

    ngx_free(url.data);

    return cred->rt.identity ? NGX_OK : NGX_ERROR;
}


/* the identity service answered: what it says goes to the zone */

static void
ngx_http_sf_oauth_refresh_identified(ngx_http_sf_oauth_answer_t *answer,
    void *data)
{
    ngx_http_sf_oauth_cred_t *cred = data;

    ngx_int_t                 rc;
    ngx_pool_t               *pool;
    ngx_http_sf_oauth_who_t   who;

    cred->rt.identity = NULL;

    if (answer->abandoned) {
        return;
    }

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        return;
    }

    ngx_memzero(&who, sizeof(ngx_http_sf_oauth_who_t));
    who.user_id.data = cred->rt.identity_user;
    who.user_id.len = cred->rt.identity_user_len;

    rc = (answer->error == NULL && !answer->too_large)
         ? ngx_http_sf_oauth_parse_who(pool, (long) answer->status,
                                       answer->body, answer->len, &who)
         : NGX_DECLINED;

    if (rc == NGX_OK) {
        ngx_http_sf_oauth_store_identity_set(cred, &who);

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": identity of user %V "
                      "read", &cred->name, &who.user_id);

    } else {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the identity service "
                      "did not answer with the user's identity (%s, HTTP "
                      "%ui): SOAP login() answers carry the ids only; check "
                      "that the connected app's scopes include \"id\" or "
                      "\"openid\"", &cred->name,
                      answer->error ? answer->error
                                    : answer->too_large ? "too large" : "ok",
                      answer->status);
    }

    ngx_destroy_pool(pool);
}


/*
 * The web server flow's code exchange for "cred", under its lease:
 * POST token_url with grant_type=authorization_code, the code, the
 * redirect_uri of the authorize request, the PKCE verifier, client_id and
 * client_secret when configured.  NGX_OK: started, and "handler" is told
 * the outcome; NGX_BUSY: a refresh runs (nothing started); NGX_DECLINED:
 * a reload removed or changed the credential; NGX_ERROR.
 */

ngx_int_t
ngx_http_sf_oauth_refresh_exchange(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *code, ngx_str_t *redirect_uri, ngx_str_t *verifier,
    ngx_http_sf_oauth_exchanged_pt handler, void *data)
{
    ngx_int_t                              rc;
    ngx_uint_t                             n;
    ngx_keyval_t                           form[6];
    ngx_http_sf_oauth_call_t               call;
    ngx_http_sf_oauth_refresh_exchange_t  *ex;

    rc = ngx_http_sf_oauth_store_lease_connect(cred);
    if (rc != NGX_OK) {
        return rc;
    }

    ex = ngx_alloc(sizeof(ngx_http_sf_oauth_refresh_exchange_t),
                   ngx_cycle->log);
    if (ex == NULL) {
        ngx_http_sf_oauth_store_release(cred);
        return NGX_ERROR;
    }

    ex->cred = cred;
    ex->handler = handler;
    ex->data = data;

    /* what is sent may come back in an error: the redaction knows it */
    ngx_http_sf_oauth_redact_remember(cred, code->data, code->len);
    ngx_http_sf_oauth_redact_remember(cred, verifier->data, verifier->len);

    ngx_str_set(&form[0].key, "grant_type");
    ngx_str_set(&form[0].value, "authorization_code");
    ngx_str_set(&form[1].key, "code");
    form[1].value = *code;
    ngx_str_set(&form[2].key, "redirect_uri");
    form[2].value = *redirect_uri;
    ngx_str_set(&form[3].key, "code_verifier");
    form[3].value = *verifier;
    ngx_str_set(&form[4].key, "client_id");
    form[4].value = cred->client_id;
    n = 5;

    if (cred->client_secret.len) {
        ngx_str_set(&form[n].key, "client_secret");
        form[n++].value = cred->client_secret;
    }

    call.form = form;
    call.nform = n;
    call.bearer = NULL;

    ngx_http_sf_oauth_refresh_call(cred, &call, &cred->token_url,
                                   "exchanging an authorization code at the "
                                   "token endpoint",
                                   ngx_http_sf_oauth_refresh_exchanged);
    call.data = ex;

    cred->rt.transfer = ngx_http_sf_oauth_client_start(&call);
    cred->rt.transfer_start = ngx_current_msec;

    if (cred->rt.transfer == NULL) {
        ngx_free(ex);
        ngx_http_sf_oauth_store_release(cred);
        return NGX_ERROR;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": code exchange at \"%V\"",
                   &cred->name, &cred->token_url);

    return NGX_OK;
}


/* the code exchange's answer, to the caller's handler */

static void
ngx_http_sf_oauth_refresh_exchanged(ngx_http_sf_oauth_answer_t *answer,
    void *data)
{
    ngx_http_sf_oauth_refresh_exchange_t *ex = data;

    ngx_uint_t                 status;
    ngx_pool_t                *pool;
    ngx_http_sf_oauth_cred_t  *cred;
    ngx_http_sf_oauth_token_t  tok;

    cred = ex->cred;
    cred->rt.transfer = NULL;

    pool = ngx_create_pool(4096, ngx_cycle->log);

    ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
    status = answer->timed_out ? NGX_HTTP_GATEWAY_TIME_OUT
                               : NGX_HTTP_BAD_GATEWAY;

    if (answer->abandoned || pool == NULL) {
        ngx_str_set(&tok.error, "the worker process is exiting: the code "
                    "exchange was abandoned");

    } else if (ngx_http_sf_oauth_refresh_answer(answer, pool, &tok)
               == NGX_OK)
    {
        ngx_http_sf_oauth_parse_response(pool, (long) answer->status,
                                         answer->body, answer->len, &tok);
    }

    tok.duration = ngx_max(ngx_current_msec - cred->rt.transfer_start, 1);

    if (tok.ok && !ngx_http_sf_oauth_store_changed(cred)) {
        ngx_http_sf_oauth_redact_remember(cred, tok.access_token.data,
                                          tok.access_token.len);
        ngx_http_sf_oauth_redact_remember(cred, tok.refresh_token.data,
                                          tok.refresh_token.len);

    } else {
        if (tok.ok) {
            ngx_explicit_memzero(tok.access_token.data, tok.access_token.len);
            ngx_explicit_memzero(tok.refresh_token.data,
                                 tok.refresh_token.len);
            ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
            ngx_str_set(&tok.error, "a reload changed the credential during "
                        "the code exchange: connect it again");
        }

        tok.error.len = ngx_http_sf_oauth_redact(cred, tok.error.data,
                                                 tok.error.len,
                                                 tok.error.len);

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the code exchange "
                      "failed: %V", &cred->name, &tok.error);

        ngx_http_sf_oauth_store_release(cred);
        ngx_http_sf_oauth_refresh_wake(cred);
    }

    ex->handler(cred, &tok, status, ex->data);

    if (tok.ok) {
        ngx_explicit_memzero(tok.access_token.data, tok.access_token.len);
        ngx_explicit_memzero(tok.refresh_token.data, tok.refresh_token.len);
    }

    if (pool) {
        ngx_destroy_pool(pool);
    }

    ngx_free(ex);
}


/*
 * A connection's tokens, with the lease held: the credential's newest
 * generation, as a rotation's are (the zone, the state file, the fleet's
 * compare-and-set), which ends a hold or a backoff; the lease released
 * and this worker's waiters woken.  Returns the new generation.
 */

ngx_uint_t
ngx_http_sf_oauth_refresh_connected(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok)
{
    ngx_uint_t                 generation;
    ngx_http_sf_oauth_node_t  *copy;

    ngx_http_sf_oauth_redact_remember(cred, tok->access_token.data,
                                      tok->access_token.len);
    ngx_http_sf_oauth_redact_remember(cred, tok->refresh_token.data,
                                      tok->refresh_token.len);

    ngx_http_sf_oauth_store_result(cred, tok);

    ngx_http_sf_oauth_state_save(cred);

    if (ngx_http_sf_oauth_fleet_on(cred)) {
        /* the newest generation, even over a newer one of the old chain */
        ngx_http_sf_oauth_fleet_store_connected(cred,
                                            ngx_http_sf_oauth_refresh_written);
    }

    ngx_http_sf_oauth_refresh_wake(cred);

    generation = 0;

    copy = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), ngx_cycle->log);
    if (copy) {
        ngx_http_sf_oauth_store_snapshot(cred, copy);
        generation = copy->generation;
        ngx_explicit_memzero(copy, sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(copy);
    }

    return generation;
}
