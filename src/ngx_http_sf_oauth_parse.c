
/*
 * The token endpoint's answer, parsed with cJSON into a token or into an
 * error that says what failed and what the operator should do.  Nothing
 * of the answer is trusted: sizes are bounded, characters are checked, and
 * error texts from the endpoint are reduced to printable ASCII.
 */


#include <cjson/cJSON.h>

#include "ngx_http_sf_oauth.h"


typedef struct {
    const char   *error;
    const char   *description;       /* a substring to match, or NULL */
    ngx_uint_t    error_class;
    const char   *hint;
} ngx_http_sf_oauth_error_hint_t;


static void ngx_http_sf_oauth_parse_error(ngx_pool_t *pool, long status,
    cJSON *root, ngx_http_sf_oauth_token_t *tok);
static ngx_int_t ngx_http_sf_oauth_copy_field(ngx_pool_t *pool, cJSON *root,
    const char *name, size_t max, ngx_str_t *dst);
static ngx_int_t ngx_http_sf_oauth_check_url(ngx_str_t *s);
static size_t ngx_http_sf_oauth_printable(u_char *dst, const char *src,
    size_t max);


/* the token errors of Salesforce, in the order they are to be matched */

static ngx_http_sf_oauth_error_hint_t  ngx_http_sf_oauth_error_hints[] = {

    { "invalid_grant", "already being processed", NGX_HTTP_SF_OAUTH_BUSY,
      "another token request with the same refresh token is in progress; "
      "the module retries after a short backoff" },

    { "invalid_grant", "expired", NGX_HTTP_SF_OAUTH_OPERATOR,
      "the refresh token was revoked or has expired: authorize the connected "
      "app again and configure the new refresh token" },

    { "invalid_grant", "authentication failure", NGX_HTTP_SF_OAUTH_OPERATOR,
      "the integration user's password changed or the user was deactivated" },

    { "invalid_grant", "ip restricted", NGX_HTTP_SF_OAUTH_OPERATOR,
      "the user's profile restricts login IP ranges or login hours" },

    { "invalid_grant", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "Salesforce refused the refresh token: check refresh_token" },

    { "invalid_client_id", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "check client_id against the connected app's consumer key" },

    { "invalid_client", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "check client_id and client_secret against the connected app" },

    { "inactive_user", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "the integration user is inactive: reactivate it in Setup" },

    { "inactive_org", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "the org is inactive or locked" },

    { "unsupported_grant_type", NULL, NGX_HTTP_SF_OAUTH_OPERATOR,
      "enable the refresh token flow (refresh_token scope) for the "
      "connected app" },

    { NULL, NULL, NGX_HTTP_SF_OAUTH_TRANSIENT, NULL }
};


void
ngx_http_sf_oauth_parse_response(ngx_pool_t *pool, long status, u_char *body,
    size_t len, ngx_http_sf_oauth_token_t *tok)
{
    cJSON      *root, *item;
    ngx_str_t   s;
    ngx_uint_t  i;

    ngx_memzero(tok, sizeof(ngx_http_sf_oauth_token_t));

    /* cJSON decodes \u0000 into a string it then sees as shorter */
    if (ngx_strlcasestrn(body, body + len, (u_char *) "\\u0000", 6 - 1)) {
        ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                               "the token endpoint does not answer like "
                               "Salesforce",
                               "HTTP %l from the token endpoint with a NUL "
                               "character (\\u0000) in its JSON", status);
        return;
    }

    root = (len == 0) ? NULL : cJSON_ParseWithLength((char *) body, len);

    if (root == NULL || !cJSON_IsObject(root)) {
        if (root) {
            cJSON_Delete(root);
        }

        if (status >= 500) {
            ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                   "Salesforce may be down or in maintenance; "
                                   "the module retries with backoff",
                                   "HTTP %l from the token endpoint, "
                                   "%s body", status,
                                   len ? "non-JSON" : "empty");
            return;
        }

        ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                               "check that token_url is Salesforce's "
                               "/services/oauth2/token",
                               "HTTP %l from the token endpoint with %s "
                               "body, expected a JSON object", status,
                               len ? "a non-JSON" : "an empty");
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
        || ngx_http_sf_oauth_check_token(&tok->access_token) != NGX_OK)
    {
        ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
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
        != NGX_OK
        || ngx_http_sf_oauth_check_url(&tok->instance_url) != NGX_OK)
    {
        ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                               "the token endpoint does not answer like "
                               "Salesforce",
                               "the token response has no usable "
                               "\"instance_url\" (an http or https URL)");
        goto done;
    }

    item = cJSON_GetObjectItemCaseSensitive(root, "refresh_token");

    if (item && !cJSON_IsNull(item)) {
        if (ngx_http_sf_oauth_copy_field(pool, root, "refresh_token",
                                         NGX_HTTP_SF_OAUTH_REFRESH_MAX,
                                         &tok->refresh_token)
            != NGX_OK
            || ngx_http_sf_oauth_check_token(&tok->refresh_token) != NGX_OK)
        {
            ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                                   "the token endpoint does not answer like "
                                   "Salesforce",
                                   "the token response has an unusable "
                                   "\"refresh_token\" (printable "
                                   "characters, at most %d bytes)",
                                   NGX_HTTP_SF_OAUTH_REFRESH_MAX);
            goto done;
        }
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


/* the answer of /services/oauth2/introspect: "active" and "exp" */

void
ngx_http_sf_oauth_parse_introspect(ngx_pool_t *pool, long status,
    u_char *body, size_t len, ngx_http_sf_oauth_token_t *tok)
{
    cJSON  *root, *active, *exp;

    ngx_memzero(tok, sizeof(ngx_http_sf_oauth_token_t));

    root = (len == 0) ? NULL : cJSON_ParseWithLength((char *) body, len);

    if (!cJSON_IsObject(root)) {
        ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                               "check that token_url is Salesforce's",
                               "HTTP %l from the introspection endpoint "
                               "without a JSON object", status);
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
        ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
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
    u_char                          error[64], desc[256];
    size_t                          elen, dlen;
    cJSON                          *item;
    ngx_uint_t                      i;
    ngx_http_sf_oauth_error_hint_t *h;

    elen = 0;
    dlen = 0;

    item = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (cJSON_IsString(item)) {
        elen = ngx_http_sf_oauth_printable(error, item->valuestring,
                                           sizeof(error));
    }

    item = cJSON_GetObjectItemCaseSensitive(root, "error_description");
    if (cJSON_IsString(item)) {
        dlen = ngx_http_sf_oauth_printable(desc, item->valuestring,
                                           sizeof(desc));
    }

    if (elen == 0) {
        ngx_http_sf_oauth_fail(pool, tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                               "the token endpoint does not answer like "
                               "Salesforce",
                               "HTTP %l from the token endpoint without "
                               "an \"error\"", status);
        return;
    }

    for (h = ngx_http_sf_oauth_error_hints; h->error; h++) {

        if (ngx_strlen(h->error) != elen
            || ngx_strncmp(error, h->error, elen) != 0)
        {
            continue;
        }

        if (h->description == NULL) {
            break;
        }

        for (i = 0; i < dlen; i++) {
            if (ngx_strlen(h->description) <= dlen - i
                && ngx_strncasecmp(desc + i, (u_char *) h->description,
                                   ngx_strlen(h->description))
                   == 0)
            {
                goto found;
            }
        }
    }

found:

    if (h->error == NULL) {
        /* an error Salesforce does not document: 5xx transient, else hold */
        ngx_http_sf_oauth_fail(pool, tok,
                               status >= 500 ? NGX_HTTP_SF_OAUTH_TRANSIENT
                                             : NGX_HTTP_SF_OAUTH_OPERATOR,
                               "see Salesforce's OAuth error codes",
                               "Salesforce answered HTTP %l: %*s: %*s",
                               status, elen, error, dlen, desc);
        return;
    }

    ngx_http_sf_oauth_fail(pool, tok, h->error_class, h->hint,
                           "Salesforce answered HTTP %l: %*s: %*s",
                           status, elen, error, dlen, desc);
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
ngx_http_sf_oauth_check_token(ngx_str_t *s)
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


static ngx_int_t
ngx_http_sf_oauth_check_url(ngx_str_t *s)
{
    size_t  skip;

    if (s->len > 8 && ngx_strncasecmp(s->data, (u_char *) "https://", 8) == 0)
    {
        skip = 8;

    } else if (s->len > 7
               && ngx_strncasecmp(s->data, (u_char *) "http://", 7) == 0)
    {
        skip = 7;

    } else {
        return NGX_ERROR;
    }

    if (s->data[skip] == '/') {
        return NGX_ERROR;
    }

    if (ngx_http_sf_oauth_check_token(s) != NGX_OK) {
        return NGX_ERROR;
    }

    /* proxy_pass $sf_oauth_instance_url wants no trailing slash */
    while (s->len > skip + 1 && s->data[s->len - 1] == '/') {
        s->len--;
    }

    return NGX_OK;
}


/* an untrusted string reduced to printable ASCII, at most max bytes */

static size_t
ngx_http_sf_oauth_printable(u_char *dst, const char *src, size_t max)
{
    size_t  n;

    for (n = 0; *src && n < max; src++) {
        dst[n++] = (*src >= 0x20 && *src < 0x7f) ? (u_char) *src : '?';
    }

    return n;
}


void ngx_cdecl
ngx_http_sf_oauth_fail(ngx_pool_t *pool, ngx_http_sf_oauth_token_t *tok,
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
