
/*
 * The token endpoint's answer, parsed with cJSON into a token or into an
 * error that says what failed and what the operator should do.  Nothing
 * of the answer is trusted: sizes are bounded and characters are checked.
 *
 * An error text goes to the log and to clients' 502 bodies, and a hostile
 * or broken endpoint may echo secrets in it, whole or cut anywhere.  So
 * the module never echoes an endpoint's text beyond a known-safe form:
 * the "error" code if Salesforce documents it or it is a short word of
 * [a-z_], the "error_description" only as one of Salesforce's own
 * descriptions, spelt from the table below; anything else is named by its
 * size only, like a body that is not JSON.
 *
 * The URLs of the answers are read with the module's one URL scanner,
 * ngx_http_sf_oauth_url.c.
 */


#include "ngx_http_sf_oauth.h"

#include <cjson/cJSON.h>


typedef struct {
    const char   *error;
    const char   *description;       /* a substring to match, or NULL */
    ngx_uint_t    error_class;
    const char   *hint;
} ngx_http_sf_oauth_error_hint_t;


static void ngx_http_sf_oauth_parse_error(ngx_pool_t *pool, long status,
    cJSON *root, ngx_http_sf_oauth_token_t *tok);
static const char *ngx_http_sf_oauth_known_description(u_char *desc,
    size_t len);
static ngx_int_t ngx_http_sf_oauth_parse_identity(ngx_pool_t *pool,
    cJSON *root, ngx_http_sf_oauth_token_t *tok);
static ngx_int_t ngx_http_sf_oauth_parse_id(u_char **p, u_char *last,
    ngx_str_t *id);
static ngx_int_t ngx_http_sf_oauth_copy_field(ngx_pool_t *pool, cJSON *root,
    const char *name, size_t max, ngx_str_t *dst);
static const char *ngx_http_sf_oauth_check_url(ngx_pool_t *pool,
    ngx_str_t *s);


/* the token errors of Salesforce, in the order they are to be matched */

static ngx_http_sf_oauth_error_hint_t  ngx_http_sf_oauth_error_hints[] = {

    { "invalid_grant", "already being processed", NGX_HTTP_SF_OAUTH_BUSY,
      "another token request with the same refresh token is in progress; "
      "the module retries after a short backoff" },

    { "invalid_grant", "user hasn't approved this consumer",
      NGX_HTTP_SF_OAUTH_OPERATOR,
      "pre-authorize the user for the connected app: in its policies set "
      "\"Admin approved users are pre-authorized\" and add the user's "
      "profile or permission set" },

    { "invalid_grant", "audience is invalid", NGX_HTTP_SF_OAUTH_OPERATOR,
      "the JWT's audience must be https://login.salesforce.com, "
      "https://test.salesforce.com for a sandbox, or the site's URL: "
      "set \"audience\"" },

    { "invalid_grant", "expired authorization code",
      NGX_HTTP_SF_OAUTH_OPERATOR,
      "Salesforce found the JWT expired: check this host's clock (NTP); "
      "the assertion expires 3 minutes after it is made" },

    { "invalid_grant", "invalid assertion", NGX_HTTP_SF_OAUTH_OPERATOR,
      "Salesforce refused the JWT: check that private_key matches the "
      "certificate uploaded to the connected app, and client_id" },

    { "invalid_grant", "no client credentials user",
      NGX_HTTP_SF_OAUTH_OPERATOR,
      "set a run-as user for the client credentials flow in the connected "
      "app's policies" },

    { "invalid_grant", "expired", NGX_HTTP_SF_OAUTH_OPERATOR,
      "the refresh token was revoked or has expired: authorize the connected "
      "app again and configure the new refresh token" },

    { "invalid_grant", "authentication failure", NGX_HTTP_SF_OAUTH_OPERATOR,
      "the integration user's password changed or the user was deactivated" },

    { "invalid_grant", "ip restricted", NGX_HTTP_SF_OAUTH_OPERATOR,
      "the user's profile restricts login IP ranges or login hours" },

    { "invalid_grant", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "Salesforce refused the grant: check the credential's refresh_token, "
      "or its username and the connected app's policies" },

    { "invalid_client_id", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "check client_id against the connected app's consumer key" },

    { "invalid_client", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "check client_id and client_secret against the connected app (with "
      "grant jwt_bearer: client_id, and the certificate)" },

    { "inactive_user", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "the integration user is inactive: reactivate it in Setup" },

    { "inactive_org", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "the org is inactive or locked" },

    { "unsupported_grant_type", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "enable the credential's grant for the connected app: the refresh "
      "token flow (refresh_token scope), digital signatures (JWT bearer) "
      "or the client credentials flow" },

    { NULL, NULL, NGX_HTTP_SF_OAUTH_TRANSIENT, NULL }
};


/*
 * The error descriptions of Salesforce's token and introspection
 * endpoints: the only ones echoed, and in these words, not the endpoint's
 * bytes.  A description matches when it equals one of them, ignoring case
 * and surrounding white space.
 */

static const char  *ngx_http_sf_oauth_descriptions[] = {
    "expired access/refresh token",
    "authentication failure",
    "token request is already being processed",
    "IP restricted or invalid login hours",
    "invalid client credentials",
    "client identifier invalid",
    "client secret invalid",
    "invalid user credentials",
    "grant type not supported",
    "user hasn't approved this consumer",
    "audience is invalid",
    "Audience validation failed",
    "expired authorization code",
    "invalid authorization code",
    "invalid assertion",
    "user is inactive",
    "inactive user",
    "inactive organization",
    "organization is locked, closed, or suspended",
    "user is not admin approved to access this app",
    "no client credentials user enabled",
    "number of login attempts exceeded",
    "requested scope is not allowed",
    "secure connection required",
    "unknown error",
    NULL
};


/* an error code that is not Salesforce's is echoed only if [a-z_]{1,40} */
#define NGX_HTTP_SF_OAUTH_CODE_MAX  40


void
ngx_http_sf_oauth_parse_response(ngx_pool_t *pool, long status, u_char *body,
    size_t len, ngx_http_sf_oauth_token_t *tok)
{
    cJSON       *root, *item;
    ngx_str_t    s;
    ngx_uint_t   i;
    const char  *why;

    ngx_memzero(tok, sizeof(ngx_http_sf_oauth_token_t));

    /* cJSON decodes \u0000 into a string it then sees as shorter */
    if (ngx_strlcasestrn(body, body + len, (u_char *) "\\u0000", 6 - 1)) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the token endpoint does not answer like "
                                     "Salesforce",
                                     "HTTP %l from the token endpoint with a "
                                     "NUL character (\\u0000) in its JSON",
                                     status);
        return;
    }

    root = (len == 0) ? NULL : cJSON_ParseWithLength((char *) body, len);

    if (root == NULL || !cJSON_IsObject(root)) {
        if (root) {
            cJSON_Delete(root);
        }

        /* a body that is not JSON is never echoed: its size only */

        if (len == 0) {
            ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                         status >= 500
                                         ? "Salesforce may be down or in "
                                           "maintenance; the module retries "
                                           "with backoff"
                                         : "check that token_url is "
                                           "Salesforce's "
                                           "/services/oauth2/token",
                                         status >= 500
                                         ? "HTTP %l from the token endpoint, "
                                           "empty body"
                                         : "HTTP %l from the token endpoint "
                                           "with an empty body, expected a "
                                           "JSON object",
                                         status);
            return;
        }

        if (status >= 500) {
            ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                         "Salesforce may be down or in "
                                         "maintenance; the module retries with "
                                         "backoff",
                                         "HTTP %l from the token endpoint, "
                                         "non-JSON body of %uz bytes",
                                         status, len);
            return;
        }

        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "check that token_url is Salesforce's "
                                     "/services/oauth2/token",
                                     "HTTP %l from the token endpoint with a "
                                     "non-JSON body of %uz bytes, expected a "
                                     "JSON object", status, len);
        return;
    }

    if (status != 200) {
        ngx_http_sf_oauth_parse_error(pool, status, root, tok);
        cJSON_Delete(root);
        return;
    }

    if (ngx_http_sf_oauth_copy_field(pool, root, "access_token",
                                     NGX_HTTP_SF_OAUTH_TOKEN_MAX,
                                     &tok->access_token)
        != NGX_OK
        || ngx_http_sf_oauth_parse_check_token(&tok->access_token) != NGX_OK)
    {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the token endpoint does not answer like "
                                     "Salesforce",
                                     "the token response has no usable "
                                     "\"access_token\" (a non-empty string of "
                                     "printable characters, at most %d bytes)",
                                     NGX_HTTP_SF_OAUTH_TOKEN_MAX);
        goto done;
    }

    if (ngx_http_sf_oauth_copy_field(pool, root, "instance_url",
                                     NGX_HTTP_SF_OAUTH_URL_MAX,
                                     &tok->instance_url)
        != NGX_OK)
    {
        why = "it is missing or not a string of 1 to 1024 bytes";

    } else {
        why = ngx_http_sf_oauth_check_url(pool, &tok->instance_url);
    }

    if (why) {
        /* the URL itself is the endpoint's text: it is not echoed */
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the token endpoint does not answer like "
                                     "Salesforce",
                                     "the token response has no usable "
                                     "\"instance_url\": %s; only "
                                     "http(s)://HOST[:PORT] is accepted", why);
        goto done;
    }

    item = cJSON_GetObjectItemCaseSensitive(root, "refresh_token");

    if (item && !cJSON_IsNull(item)) {
        if (ngx_http_sf_oauth_copy_field(pool, root, "refresh_token",
                                         NGX_HTTP_SF_OAUTH_REFRESH_MAX,
                                         &tok->refresh_token)
            != NGX_OK
            || ngx_http_sf_oauth_parse_check_token(&tok->refresh_token)
               != NGX_OK)
        {
            ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                         "the token endpoint does not answer "
                                         "like Salesforce",
                                         "the token response has an unusable "
                                         "\"refresh_token\" (printable "
                                         "characters, at most %d bytes)",
                                         NGX_HTTP_SF_OAUTH_REFRESH_MAX);
            goto done;
        }
    }

    if (ngx_http_sf_oauth_parse_identity(pool, root, tok) != NGX_OK) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the module retries with backoff",
                                     "out of memory");
        goto done;
    }

    /* issued_at is informational: epoch milliseconds as a string */

    item = cJSON_GetObjectItemCaseSensitive(root, "issued_at");

    if (cJSON_IsString(item)) {
        s.data = (u_char *) item->valuestring;
        s.len = ngx_strlen(s.data);

        for (i = 0; i < s.len && i < 19; i++) {
            if (s.data[i] < '0' || s.data[i] > '9') {
                break;
            }

            tok->issued_at = tok->issued_at * 10 + (s.data[i] - '0');
        }

        if (i != s.len) {
            tok->issued_at = 0;
        }
    }

    tok->ok = 1;

done:

    cJSON_Delete(root);
}


/*
 * The token's user: "id" is the identity URL, .../id/ORG_ID/USER_ID.  It
 * is optional: without it, SOAP login() emulation has no ids to give.
 * The ids are copied: the JSON goes before the answer is used.
 */

static ngx_int_t
ngx_http_sf_oauth_parse_identity(ngx_pool_t *pool, cJSON *root,
    ngx_http_sf_oauth_token_t *tok)
{
    u_char  *p, *last;
    size_t   len;
    cJSON   *item;

    item = cJSON_GetObjectItemCaseSensitive(root, "id");

    if (!cJSON_IsString(item)) {
        return NGX_OK;
    }

    len = ngx_strlen(item->valuestring);

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, item->valuestring, len);
    last = p + len;

    p = ngx_strlcasestrn(p, last, (u_char *) "/id/", sizeof("/id/") - 1 - 1);
    if (p == NULL) {
        return NGX_OK;
    }

    p += sizeof("/id/") - 1;

    if (ngx_http_sf_oauth_parse_id(&p, last, &tok->org_id) != NGX_OK
        || p == last || *p++ != '/'
        || ngx_http_sf_oauth_parse_id(&p, last, &tok->user_id) != NGX_OK
        || (p != last && *p != '/' && *p != '?'))
    {
        ngx_str_null(&tok->org_id);
        ngx_str_null(&tok->user_id);
    }

    return NGX_OK;
}


/* a record id at *p: 15 or 18 letters and digits */

static ngx_int_t
ngx_http_sf_oauth_parse_id(u_char **p, u_char *last, ngx_str_t *id)
{
    u_char  *s;

    for (s = *p; s < last; s++) {
        if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z')
            && !(*s >= '0' && *s <= '9'))
        {
            break;
        }
    }

    if (s - *p != 15 && s - *p != 18) {
        return NGX_ERROR;
    }

    id->data = *p;
    id->len = s - *p;
    *p = s;

    return NGX_OK;
}


/*
 * The identity service's answer (a GET of the "id" URL with the token):
 * the user's name, email and settings, for the userInfo of SOAP login()
 * emulation.  It must be about who->user_id.  A value longer than
 * NGX_HTTP_SF_OAUTH_FIELD_MAX bytes stays empty; control characters, which
 * XML cannot hold, become "?".
 */

ngx_int_t
ngx_http_sf_oauth_parse_who(ngx_pool_t *pool, long status, u_char *body,
    size_t len, ngx_http_sf_oauth_who_t *who)
{
    u_char      *p;
    size_t       n, k;
    cJSON       *root, *item;
    ngx_int_t    rc;
    ngx_uint_t   i;

    static const char  *names[NGX_HTTP_SF_OAUTH_FIELDS] = {
        "username", "email", "display_name", "language", "locale",
        "timezone", "user_type"
    };

    if (status != 200 || len == 0) {
        return NGX_DECLINED;
    }

    root = cJSON_ParseWithLength((char *) body, len);

    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return NGX_DECLINED;
    }

    rc = NGX_DECLINED;

    item = cJSON_GetObjectItemCaseSensitive(root, "user_id");

    if (!cJSON_IsString(item)
        || ngx_strlen(item->valuestring) != who->user_id.len
        || ngx_strncmp(item->valuestring, who->user_id.data,
                       who->user_id.len)
           != 0)
    {
        goto done;
    }

    for (i = 0; i < NGX_HTTP_SF_OAUTH_FIELDS; i++) {
        ngx_str_null(&who->field[i]);

        item = cJSON_GetObjectItemCaseSensitive(root, names[i]);

        if (!cJSON_IsString(item)) {
            continue;
        }

        n = ngx_strlen(item->valuestring);

        if (n > NGX_HTTP_SF_OAUTH_FIELD_MAX) {
            continue;
        }

        p = ngx_pnalloc(pool, n);
        if (p == NULL) {
            rc = NGX_ERROR;
            goto done;
        }

        for (k = 0; k < n; k++) {
            p[k] = ((u_char) item->valuestring[k] < 0x20
                    || item->valuestring[k] == 0x7f)
                   ? '?' : (u_char) item->valuestring[k];
        }

        who->field[i].data = p;
        who->field[i].len = n;
    }

    rc = NGX_OK;

done:

    cJSON_Delete(root);

    return rc;
}


/* the answer of /services/oauth2/introspect: "active" and "exp" */

void
ngx_http_sf_oauth_parse_introspect(ngx_pool_t *pool, long status,
    u_char *body, size_t len, ngx_http_sf_oauth_token_t *tok)
{
    cJSON  *root, *active, *exp;

    ngx_memzero(tok, sizeof(ngx_http_sf_oauth_token_t));

    root = (len == 0) ? NULL : cJSON_ParseWithLength((char *) body, len);

    if (!cJSON_IsObject(root)) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "check that token_url is Salesforce's",
                                     "HTTP %l from the introspection endpoint "
                                     "without a JSON object (a body of %uz "
                                     "bytes)",
                                     status, len);
        goto done;
    }

    if (status != 200) {
        ngx_http_sf_oauth_parse_error(pool, status, root, tok);
        goto done;
    }

    active = cJSON_GetObjectItemCaseSensitive(root, "active");
    exp = cJSON_GetObjectItemCaseSensitive(root, "exp");

    if (!cJSON_IsBool(active)
        || (cJSON_IsTrue(active)
            && (!cJSON_IsNumber(exp) || exp->valuedouble < 0
                || exp->valuedouble > 1e11)))
    {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the endpoint does not answer like "
                                     "Salesforce",
                                     "the introspection answer has no usable "
                                     "\"active\" and \"exp\"");
        goto done;
    }

    tok->ok = 1;
    tok->active = cJSON_IsTrue(active);
    tok->exp = tok->active ? (time_t) exp->valuedouble : 0;

done:

    cJSON_Delete(root);
}


static void
ngx_http_sf_oauth_parse_error(ngx_pool_t *pool, long status, cJSON *root,
    ngx_http_sf_oauth_token_t *tok)
{
    u_char                          *error, *desc, ebuf[64], dbuf[64];
    size_t                           elen, dlen, n;
    cJSON                           *item;
    ngx_uint_t                       i;
    const char                      *known;
    ngx_http_sf_oauth_error_hint_t  *h;

    error = NULL;
    desc = NULL;
    elen = 0;
    dlen = 0;

    item = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (cJSON_IsString(item) && item->valuestring) {
        error = (u_char *) item->valuestring;
        elen = ngx_strlen(error);
    }

    item = cJSON_GetObjectItemCaseSensitive(root, "error_description");
    if (cJSON_IsString(item) && item->valuestring) {
        desc = (u_char *) item->valuestring;
        dlen = ngx_strlen(desc);
    }

    if (elen == 0) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the token endpoint does not answer like "
                                     "Salesforce",
                                     "HTTP %l from the token endpoint without "
                                     "an \"error\"", status);
        return;
    }

    /* the class and the hint: matched on the text, which is not echoed */

    for (h = ngx_http_sf_oauth_error_hints; h->error; h++) {

        if (ngx_strlen(h->error) != elen
            || ngx_strncmp(error, h->error, elen) != 0)
        {
            continue;
        }

        if (h->description == NULL) {
            break;
        }

        n = ngx_strlen(h->description);

        for (i = 0; n <= dlen && i <= dlen - n; i++) {
            if (ngx_strncasecmp(desc + i, (u_char *) h->description, n) == 0)
            {
                goto found;
            }
        }
    }

found:

    /* what is echoed: Salesforce's code, or a short word, or its size */

    if (h->error) {
        error = (u_char *) h->error;

    } else {
        for (i = 0; i < elen && i < NGX_HTTP_SF_OAUTH_CODE_MAX; i++) {
            if (!((error[i] >= 'a' && error[i] <= 'z') || error[i] == '_')) {
                break;
            }
        }

        if (i != elen) {
            n = ngx_sprintf(ebuf, "(error code withheld: %uz bytes)", elen)
                - ebuf;
            error = ebuf;
            elen = n;
        }
    }

    known = ngx_http_sf_oauth_known_description(desc, dlen);

    if (known) {
        desc = (u_char *) known;
        dlen = ngx_strlen(known);

    } else if (dlen) {
        n = ngx_sprintf(dbuf, "(description withheld: %uz bytes)", dlen)
            - dbuf;
        desc = dbuf;
        dlen = n;

    } else {
        desc = (u_char *) "";
    }

    /* an error Salesforce does not document: 5xx transient, else hold */

    ngx_http_sf_oauth_parse_fail(pool, tok,
                                 h->error ? h->error_class
                                 : status >= 500 ? NGX_HTTP_SF_OAUTH_TRANSIENT
                                                 : NGX_HTTP_SF_OAUTH_OPERATOR,
                                 h->error ? h->hint
                                          : "see Salesforce's OAuth error "
                                            "codes",
                                 "Salesforce answered HTTP %l: %*s%s%*s",
                                 status, elen, error, dlen ? ": " : "", dlen,
                                 desc);
}


static const char *
ngx_http_sf_oauth_known_description(u_char *desc, size_t len)
{
    size_t        n;
    const char  **d;

    while (len && (*desc == ' ' || *desc == '\t')) {
        desc++;
        len--;
    }

    while (len && (desc[len - 1] == ' ' || desc[len - 1] == '\t')) {
        len--;
    }

    if (len == 0) {
        return NULL;
    }

    for (d = ngx_http_sf_oauth_descriptions; *d; d++) {
        n = ngx_strlen(*d);

        if (n == len && ngx_strncasecmp(desc, (u_char *) *d, n) == 0) {
            return *d;
        }
    }

    return NULL;
}


/*
 * A redirect of the token endpoint, which is not followed.  Its target is
 * the endpoint's text too: only its origin is echoed, checked like an
 * instance_url, and its path only if it is the token endpoint's own.
 */

void
ngx_http_sf_oauth_parse_redirect(ngx_pool_t *pool, long status,
    const char *location, ngx_http_sf_oauth_token_t *tok)
{
    size_t       len, n;
    u_char      *p, *end;
    ngx_str_t    origin;

    if (location == NULL) {
        location = "";
    }

    len = ngx_strlen(location);
    p = (u_char *) location;
    end = p + len;

    origin.len = 0;
    origin.data = NULL;

    if (len <= NGX_HTTP_SF_OAUTH_URL_MAX) {

        for ( /* void */ ; end - p >= 3; p++) {
            if (p[0] == ':' && p[1] == '/' && p[2] == '/') {
                break;
            }
        }

        if (end - p >= 3) {

            for (p += 3; p < end; p++) {
                if (*p == '/' || *p == '?' || *p == '#') {
                    break;
                }
            }

            origin.len = p - (u_char *) location;
            origin.data = ngx_pnalloc(pool, origin.len);

            if (origin.data == NULL) {
                origin.len = 0;

            } else {
                ngx_memcpy(origin.data, location, origin.len);

                if (ngx_http_sf_oauth_check_url(pool, &origin) != NULL) {
                    origin.len = 0;
                }
            }
        }
    }

    if (len == 0) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "the token endpoint does not answer like "
                                     "Salesforce",
                                     "the token endpoint redirects (HTTP %l) "
                                     "without a Location", status);
        return;
    }

    if (origin.len == 0) {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "set token_url to the URL the endpoint "
                                     "redirects to; redirects are not followed",
                                     "the token endpoint redirects (HTTP %l) "
                                     "to a URL of %uz bytes (withheld)",
                                     status, len);
        return;
    }

    n = end - p;

    if (n == 0
        || (n == 1 && *p == '/')
        || (n == sizeof("/services/oauth2/token") - 1
            && ngx_strncmp(p, "/services/oauth2/token", n) == 0))
    {
        ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                     "set token_url to the URL the endpoint "
                                     "redirects to; redirects are not followed",
                                     "the token endpoint redirects (HTTP %l) "
                                     "to \"%V%*s\"", status, &origin, n, p);
        return;
    }

    ngx_http_sf_oauth_parse_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                 "set token_url to the URL the endpoint "
                                 "redirects to; redirects are not followed",
                                 "the token endpoint redirects (HTTP %l) to "
                                 "\"%V\" and a path or query of %uz bytes "
                                 "(withheld)",
                                 status, &origin, n);
}


static ngx_int_t
ngx_http_sf_oauth_copy_field(ngx_pool_t *pool, cJSON *root, const char *name,
    size_t max, ngx_str_t *dst)
{
    size_t  len;
    cJSON  *item;

    item = cJSON_GetObjectItemCaseSensitive(root, name);

    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        return NGX_ERROR;
    }

    len = ngx_strlen(item->valuestring);

    if (len == 0 || len > max) {
        return NGX_ERROR;
    }

    dst->data = ngx_pnalloc(pool, len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, item->valuestring, len);
    dst->len = len;

    return NGX_OK;
}


/* a token goes into a header: printable ASCII, no space, quote or escape */

ngx_int_t
ngx_http_sf_oauth_parse_check_token(ngx_str_t *s)
{
    size_t  i;

    for (i = 0; i < s->len; i++) {
        if (s->data[i] <= 0x20 || s->data[i] >= 0x7f
            || s->data[i] == '"' || s->data[i] == '\\')
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * instance_url is where "proxy_pass $sf_oauth_instance_url" sends every
 * request, so it may name a scheme, a host and a port, and nothing that
 * would change the request: no path, query or fragment, which proxy_pass
 * would put in place of the request's URI, and no user information.  The
 * host is a DNS name or IPv4 address (letters, digits, "-" and ".") or an
 * IPv6 address in brackets; the port is 1 to 65535.  A trailing "/" alone
 * is stripped.  Returns NULL for a good URL, else what is wrong with it.
 */

static const char *
ngx_http_sf_oauth_check_url(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char                   *p, *last, *authority;
    ngx_int_t                 rc;
    ngx_http_sf_oauth_url_t   u;

    rc = ngx_http_sf_oauth_url_parse(pool, s, &u);

    if (rc == NGX_DECLINED) {
        return "it is not an http or https URL";
    }

    if (ngx_http_sf_oauth_parse_check_token(s) != NGX_OK) {
        return "it has spaces, quotes or characters that are not printable";
    }

    last = s->data + s->len;
    authority = ngx_strlchr(s->data, last, ':') + sizeof("://") - 1;

    for (p = authority; p < last; p++) {
        if (*p == '@') {
            return "it has user information";
        }
    }

    if (rc != NGX_OK) {

        if (u.err == NULL) {
            return "out of memory";
        }

        if (authority == u.origin.data + u.origin.len) {
            return "it has no host";
        }

        if (ngx_strcmp(u.err, "invalid port") == 0) {
            return "it has an invalid port";
        }

        return (*authority == '[')
               ? "it has an invalid IPv6 address"
               : "its host has characters other than letters, digits, "
                 "\"-\" and \".\"";
    }

    if (u.host.data[0] != '[') {
        for (p = u.host.data; p < u.host.data + u.host.len; p++) {
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')
                  || (*p >= 'A' && *p <= 'Z') || *p == '-' || *p == '.'))
            {
                return "its host has characters other than letters, "
                       "digits, \"-\" and \".\"";
            }
        }
    }

    if (u.uri.len > 1 || (u.uri.len == 1 && u.uri.data[0] != '/')) {
        return "it has a path, a query or a fragment";
    }

    /* proxy_pass $sf_oauth_instance_url wants no trailing slash */
    s->len = u.origin.len;

    return NULL;
}


void ngx_cdecl
ngx_http_sf_oauth_parse_fail(ngx_pool_t *pool, ngx_http_sf_oauth_token_t *tok,
    ngx_uint_t error_class, const char *hint, const char *fmt, ...)
{
    u_char   *p, buf[NGX_HTTP_SF_OAUTH_ERROR_MAX];
    va_list   args;

    tok->ok = 0;
    tok->error_class = error_class;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    tok->error.len = p - buf;
    tok->error.data = ngx_pnalloc(pool, tok->error.len);

    if (tok->error.data == NULL) {
        tok->error.len = 0;

    } else {
        ngx_memcpy(tok->error.data, buf, tok->error.len);
    }

    tok->hint.data = (u_char *) hint;
    tok->hint.len = ngx_strlen(hint);
}
