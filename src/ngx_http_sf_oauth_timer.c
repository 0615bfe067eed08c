
/*
 * The module's own timer events: the refresh ahead of expiry, libcurl's
 * timeout, and a waiting request woken at once.
 */


#include "ngx_http_sf_oauth.h"


static ngx_connection_t  ngx_http_sf_oauth_timer_conn;


/*
 * A cancelable timer event of this module's, not tied to a connection.
 * nginx's timer debug lines read the fd of ev->data as a connection: it
 * points to one with fd -1.
 */

void
ngx_http_sf_oauth_timer_init(ngx_event_t *ev, ngx_event_handler_pt handler,
    ngx_log_t *log)
{
    ngx_http_sf_oauth_timer_conn.fd = (ngx_socket_t) -1;

    ev->handler = handler;
    ev->data = &ngx_http_sf_oauth_timer_conn;
    ev->log = log;
    ev->cancelable = 1;
}


/*
 * Runs an event's handler as soon as the current event is handled, not
 * when its timer would have: a waiting request woken at once.
 */

void
ngx_http_sf_oauth_timer_post(ngx_event_t *ev)
{
    if (ev->timer_set) {
        ngx_del_timer(ev);
    }

    if (!ev->posted) {
        ngx_post_event(ev, &ngx_posted_events);
    }
}
