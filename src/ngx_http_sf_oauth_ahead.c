
/*
 * The refresh ahead of expiry ("lifetime" and "refresh_ahead" in a
 * credential).  Salesforce's token response has no expiry, so without
 * help a token dies under a live request, which the 401 replay then
 * cures.  With the org's session timeout configured, each worker looks
 * at its credentials on a timer, and the one that finds a token close to
 * its estimated expiry takes the lease and refreshes it in the
 * background: requests keep using the old token meanwhile and never wait.
 *
 * With "introspect on" the expiry is not estimated but asked of
 * Salesforce (/services/oauth2/introspect) when it comes due: a token in
 * use has slid further, one that is not is refreshed.
 *
 * The same timer gets a token that nobody in this worker waits for in one
 * more case: a reload changed a credential (its token_url, grant...)
 * while requests of the workers before it waited for its token.  Those
 * workers know only the old configuration and cannot get the new one's
 * token: they say that they wait for it, and a worker of the new
 * configuration gets it for them, once their token request in flight is
 * over (the handover).  And it picks up the outcome of a token request
 * that a worker before a reload made, when the reload moved the record
 * to another zone (ngx_http_sf_oauth_store_carried): the requests of this
 * worker that wait for it are woken by the zone, not by this timer, but a
 * token that nobody waits for (a refresh ahead) must land here too.  The
 * other way, it answers the workers before such a reload, which cannot
 * refresh any more, when a request of theirs needs a new token
 * (ngx_http_sf_oauth_store_relay): once a second while none does.
 *
 * This file only decides when: the store hands it the lease, and the
 * refresh makes the token request (or the introspection) under it.
 */


#include "ngx_http_sf_oauth.h"


static void ngx_http_sf_oauth_ahead_handler(ngx_event_t *ev);
static ngx_uint_t ngx_http_sf_oauth_ahead_handover(
    ngx_http_sf_oauth_cred_t *cred, ngx_pool_t *pool);


static ngx_event_t  ngx_http_sf_oauth_ahead_event;

/* when this worker started: the workers before it have a moment to ask */
static ngx_msec_t   ngx_http_sf_oauth_ahead_start;


ngx_int_t
ngx_http_sf_oauth_ahead_init(ngx_cycle_t *cycle)
{
    ngx_uint_t                      i;
    ngx_msec_t                      first;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (cred[i]->lifetime || cred[i]->introspect || cred[i]->rt.handover
            || cred[i]->rt.carried || cred[i]->rt.relay)
        {
            break;
        }
    }

    if (i == smcf->creds.nelts) {
        return NGX_OK;
    }

    ngx_http_sf_oauth_timer_init(&ngx_http_sf_oauth_ahead_event,
                                 ngx_http_sf_oauth_ahead_handler, cycle->log);

    ngx_http_sf_oauth_ahead_start = ngx_current_msec;

    /* a handover at once, the refresh ahead in a second */

    for (first = 1000; i < smcf->creds.nelts; i++) {
        if (cred[i]->rt.handover || cred[i]->rt.carried) {
            first = NGX_HTTP_SF_OAUTH_POLL_MAX;
        }
    }

    ngx_add_timer(&ngx_http_sf_oauth_ahead_event, first);

    return NGX_OK;
}


static void
ngx_http_sf_oauth_ahead_handler(ngx_event_t *ev)
{
    ngx_int_t                       rc;
    ngx_msec_t                      next, wait;
    ngx_uint_t                      i, active;
    ngx_pool_t                     *pool;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_lookup_t      lk;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    pool = ngx_create_pool(1024, ev->log);
    if (pool == NULL) {
        ngx_add_timer(ev, 1000);
        return;
    }

    next = 1000;
    active = 0;

    for (i = 0; i < smcf->creds.nelts; i++) {

        if (cred[i]->rt.carried) {
            active = 1;

            if (ngx_http_sf_oauth_store_carried(cred[i])) {
                /* an old worker's token request, moved by a reload */
                next = NGX_HTTP_SF_OAUTH_POLL_MAX;
                continue;
            }

            cred[i]->rt.carried = 0;
        }

        if (cred[i]->rt.relay) {
            active = 1;

            rc = ngx_http_sf_oauth_store_relay(cred[i], pool, &lk);

            if (rc == NGX_HTTP_SF_OAUTH_GOT_LEASE) {
                ngx_log_error(NGX_LOG_INFO, ev->log, 0,
                              "sf_oauth: credential \"%V\": a request of "
                              "the worker processes before the reload needs "
                              "a new token: refreshing for it",
                              &cred[i]->name);

                (void) ngx_http_sf_oauth_refresh_start(cred[i], &lk);
            }

            if (rc != NGX_DECLINED) {
                next = NGX_HTTP_SF_OAUTH_POLL_MAX;
            }
        }

        if (cred[i]->rt.handover) {
            active = 1;

            if (cred[i]->rt.transfer
                || ngx_http_sf_oauth_ahead_handover(cred[i], pool))
            {
                next = NGX_HTTP_SF_OAUTH_POLL_MAX;
                continue;
            }
        }

        if (cred[i]->lifetime == 0 && !cred[i]->introspect) {
            continue;
        }

        active = 1;

        if (cred[i]->rt.transfer) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                           "sf_oauth: credential \"%V\": ahead: a token "
                           "request of this process is in flight",
                           &cred[i]->name);
            continue;
        }

        rc = ngx_http_sf_oauth_store_ahead(cred[i], pool, &lk, &wait);

        next = ngx_min(next, wait);

        if (rc != NGX_HTTP_SF_OAUTH_GOT_LEASE) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                           "sf_oauth: credential \"%V\": ahead: not due, "
                           "or another process refreshes; looking again "
                           "within %M ms", &cred[i]->name, wait);
            continue;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                       "sf_oauth: credential \"%V\": ahead: the token is "
                       "due: %s", &cred[i]->name,
                       lk.introspect ? "introspecting it" : "refreshing it");

        if (!lk.introspect) {
            ngx_log_error(NGX_LOG_INFO, ev->log, 0,
                          "sf_oauth: credential \"%V\": refreshing the "
                          "token ahead of its expiry", &cred[i]->name);
        }

        (void) ngx_http_sf_oauth_refresh_start(cred[i], &lk);
    }

    ngx_destroy_pool(pool);

    if (!active) {
        /* the handovers are over, and no credential refreshes ahead */
        return;
    }

    /* look again when the next token comes due, 50 ms to 1 s from now */
    ngx_add_timer(ev, ngx_max(next, NGX_HTTP_SF_OAUTH_POLL_MAX));
}


/*
 * The handover of a credential that this configuration's reload changed.
 * Returns 1 while it goes on: the workers before the reload wait for a
 * token, or may still say so; 0 when it is over.
 */

static ngx_uint_t
ngx_http_sf_oauth_ahead_handover(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool)
{
    ngx_int_t                   rc;
    ngx_http_sf_oauth_lookup_t  lk;

    rc = ngx_http_sf_oauth_store_handover(cred, pool, &lk);

    switch (rc) {

    case NGX_HTTP_SF_OAUTH_GOT_LEASE:
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the reload changed the "
                      "credential while requests waited for its token: "
                      "refreshing for them", &cred->name);

        (void) ngx_http_sf_oauth_refresh_start(cred, &lk);
        return 1;

    case NGX_HTTP_SF_OAUTH_GOT_WAIT:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": handover: a token "
                       "request for the workers before the reload is in "
                       "flight", &cred->name);
        return 1;

    case NGX_DECLINED:
        /* nothing asked yet: the workers before the reload get a moment */
        if (ngx_current_msec - ngx_http_sf_oauth_ahead_start
            < NGX_HTTP_SF_OAUTH_LEASE_SLACK)
        {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": handover: "
                           "nothing asked yet", &cred->name);
            return 1;
        }

        break;

    default: /* NGX_DONE, NGX_HTTP_SF_OAUTH_GOT_ERROR */
        break;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": handover: over",
                   &cred->name);

    cred->rt.handover = 0;

    return 0;
}
