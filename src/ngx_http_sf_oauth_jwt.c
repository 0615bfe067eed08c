
/*
 * The JWT bearer grant (grant jwt_bearer): the credential's RSA private
 * key, read when the configuration is loaded, and the assertion that each
 * token request sends, signed RS256 with OpenSSL's EVP API.
 *
 * The assertion is {"alg":"RS256"} and the claims Salesforce checks: iss,
 * the consumer key; sub, the username; aud, the login or test host or a
 * site URL; exp, at most 3 minutes ahead.  Each part is base64url without
 * padding.  The builder parses nothing: its inputs are the configuration's
 * strings, JSON-escaped, and the clock.
 *
 * And whether an access token has the form of a JWT, which the SOAP API
 * refuses: the handler logs an error, once for each such token, before it
 * puts one in an envelope.
 */


#include "ngx_http_sf_oauth.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>


/* how far ahead the assertion expires: Salesforce takes 3 minutes at most */
#define NGX_HTTP_SF_OAUTH_JWT_EXP  180

/* the smallest RSA key taken: NIST's floor since 2013, and Salesforce's */
#define NGX_HTTP_SF_OAUTH_JWT_BITS  2048


static int ngx_http_sf_oauth_jwt_no_passphrase(char *buf, int size,
    int rwflag, void *u);
static void ngx_http_sf_oauth_jwt_cleanup(void *data);


/* base64url of {"alg":"RS256"} */
static ngx_str_t  ngx_http_sf_oauth_jwt_header =
    ngx_string("eyJhbGciOiJSUzI1NiJ9");


/*
 * The private key from its PEM text, which the caller read from the file
 * "private_key" names and wipes afterwards.  It must be an RSA key of at
 * least 2,048 bits, not encrypted.
 */

char *
ngx_http_sf_oauth_jwt_key(ngx_conf_t *cf, ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *pem)
{
    int                  bits;
    BIO                 *bio;
    EVP_PKEY            *pkey;
    ngx_pool_cleanup_t  *cln;

    bio = BIO_new_mem_buf(pem->data, (int) pem->len);
    if (bio == NULL) {
        return NGX_CONF_ERROR;
    }

    pkey = PEM_read_bio_PrivateKey(bio, NULL,
                                   ngx_http_sf_oauth_jwt_no_passphrase, NULL);

    BIO_free(bio);
    ERR_clear_error();

    if (pkey == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "private_key \"%V\" of sf_oauth_credential \"%V\" "
                           "is not a PEM private key, or it is encrypted: "
                           "give the unencrypted PEM RSA key whose "
                           "certificate the connected app has",
                           &cred->private_key, &cred->name);
        return NGX_CONF_ERROR;
    }

    if (EVP_PKEY_base_id(pkey) != EVP_PKEY_RSA) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "private_key \"%V\" of sf_oauth_credential \"%V\" "
                           "is not an RSA key: Salesforce signs JWT bearer "
                           "assertions with RS256 only",
                           &cred->private_key, &cred->name);
        EVP_PKEY_free(pkey);
        return NGX_CONF_ERROR;
    }

    bits = EVP_PKEY_bits(pkey);

    if (bits < NGX_HTTP_SF_OAUTH_JWT_BITS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "private_key \"%V\" of sf_oauth_credential \"%V\" "
                           "is an RSA key of %d bits, which can be broken: "
                           "make a key of at least %d bits (\"openssl "
                           "genpkey -algorithm RSA -pkeyopt "
                           "rsa_keygen_bits:%d\") and upload its "
                           "certificate to the connected app",
                           &cred->private_key, &cred->name, bits,
                           NGX_HTTP_SF_OAUTH_JWT_BITS,
                           NGX_HTTP_SF_OAUTH_JWT_BITS);
        EVP_PKEY_free(pkey);
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        EVP_PKEY_free(pkey);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_sf_oauth_jwt_cleanup;
    cln->data = pkey;

    cred->pkey = pkey;

    return NGX_CONF_OK;
}


/*
 * The public half of the key, DER-encoded, in pool: the credential's
 * fingerprint of its secrets tells a new key by it, without hashing the
 * private one.
 */

ngx_int_t
ngx_http_sf_oauth_jwt_public(ngx_http_sf_oauth_cred_t *cred, ngx_pool_t *pool,
    ngx_str_t *der)
{
    int      len;
    u_char  *p;

    len = i2d_PUBKEY(cred->pkey, NULL);

    if (len <= 0) {
        ERR_clear_error();
        return NGX_ERROR;
    }

    der->data = ngx_pnalloc(pool, len);
    if (der->data == NULL) {
        return NGX_ERROR;
    }

    p = der->data;

    if (i2d_PUBKEY(cred->pkey, &p) != len) {
        ERR_clear_error();
        return NGX_ERROR;
    }

    der->len = len;

    return NGX_OK;
}


/* an encrypted key would ask for a passphrase: there is none to give */

static int
ngx_http_sf_oauth_jwt_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return 0;
}


static void
ngx_http_sf_oauth_jwt_cleanup(void *data)
{
    EVP_PKEY_free(data);
}


/*
 * A signed assertion in pool: header.claims.signature.  The caller wipes
 * it when the request is made: it is a secret until it expires.
 */

ngx_int_t
ngx_http_sf_oauth_jwt_assertion(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *jwt)
{
    u_char      *p, *claims, *sig;
    size_t       len, siglen;
    ngx_int_t    rc;
    ngx_str_t    src, dst;
    EVP_MD_CTX  *md;

    /* the claims, as JSON */

    len = sizeof("{\"iss\":\"\",\"sub\":\"\",\"aud\":\"\",\"exp\":}") - 1
          + cred->client_id.len
          + ngx_escape_json(NULL, cred->client_id.data, cred->client_id.len)
          + cred->username.len
          + ngx_escape_json(NULL, cred->username.data, cred->username.len)
          + cred->audience.len
          + ngx_escape_json(NULL, cred->audience.data, cred->audience.len)
          + NGX_TIME_T_LEN;

    claims = ngx_pnalloc(pool, len);
    if (claims == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(claims, "{\"iss\":\"", sizeof("{\"iss\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, cred->client_id.data,
                                   cred->client_id.len);
    p = ngx_cpymem(p, "\",\"sub\":\"", sizeof("\",\"sub\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, cred->username.data,
                                   cred->username.len);
    p = ngx_cpymem(p, "\",\"aud\":\"", sizeof("\",\"aud\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, cred->audience.data,
                                   cred->audience.len);
    p = ngx_sprintf(p, "\",\"exp\":%T}",
                    ngx_time() + NGX_HTTP_SF_OAUTH_JWT_EXP);

    src.data = claims;
    src.len = p - claims;

    /* header.claims, then "." and the signature, all base64url */

    siglen = EVP_PKEY_size(cred->pkey);

    len = ngx_http_sf_oauth_jwt_header.len
          + 1 + ngx_base64_encoded_length(src.len)
          + 1 + ngx_base64_encoded_length(siglen);

    jwt->data = ngx_pnalloc(pool, len);
    sig = ngx_pnalloc(pool, siglen);

    if (jwt->data == NULL || sig == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(jwt->data, ngx_http_sf_oauth_jwt_header.data,
                   ngx_http_sf_oauth_jwt_header.len);
    *p++ = '.';

    dst.data = p;
    ngx_encode_base64url(&dst, &src);
    p += dst.len;

    jwt->len = p - jwt->data;

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_OK;

    if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, cred->pkey) != 1
        || EVP_DigestSign(md, sig, &siglen, jwt->data, jwt->len) != 1)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": signing the JWT "
                      "assertion failed", &cred->name);
        ERR_clear_error();
        rc = NGX_ERROR;
    }

    EVP_MD_CTX_free(md);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    *p++ = '.';

    src.data = sig;
    src.len = siglen;
    dst.data = p;
    ngx_encode_base64url(&dst, &src);

    ngx_explicit_memzero(sig, siglen);

    jwt->len = (p - jwt->data) + dst.len;

    return NGX_OK;
}


/*
 * Whether an access token has the form of a JWT (three base64url parts):
 * an org can issue those, and the SOAP API refuses them.
 */

ngx_int_t
ngx_http_sf_oauth_jwt_match_form(ngx_str_t *token)
{
    u_char      c;
    size_t      i;
    ngx_uint_t  dots;

    if (token->len < 10 || ngx_strncmp(token->data, "eyJ", 3) != 0) {
        return 0;
    }

    dots = 0;

    for (i = 0; i < token->len; i++) {
        c = token->data[i];

        if (c == '.') {
            dots++;
            continue;
        }

        if (!(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z')
            && !(c >= '0' && c <= '9') && c != '-' && c != '_')
        {
            return 0;
        }
    }

    return dots == 2;
}
