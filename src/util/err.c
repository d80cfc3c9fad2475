/* Error codes to text, and the diagnostic buffer's writer. */
#include "etf/etf.h"

#include <stdarg.h>
#include <stdio.h>

const char *etf_strerror(int err)
{
    switch (err) {
    case ETF_OK: return "success";
    case ETF_EINVAL: return "invalid argument";
    case ETF_ENOMEM: return "out of memory";
    case ETF_ENOENT: return "not found";
    case ETF_EIO: return "input/output error";
    case ETF_ENOTSUP: return "not supported";
    case ETF_EFORMAT: return "malformed input";
    case ETF_EBUSY: return "in use";
    case ETF_ELIMIT: return "limit exceeded";
    case ETF_ESHUTDOWN: return "shutting down";
    case ETF_EDEVICE: return "device failure";
    default: return "unknown error";
    }
}

int etf_diagf(struct etf_diag *diag, int err, const char *fmt, ...)
{
    if (diag) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(diag->msg, sizeof diag->msg, fmt, ap);
        va_end(ap);
    }
    return err;
}
