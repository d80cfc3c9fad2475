/* TRY(call): returns call's status from the calling function when it is not 0, the way the
 * device backends chain their setup steps (0 = success, an ETF_E* code otherwise). */
#ifndef ETF_UTIL_TRY_H
#define ETF_UTIL_TRY_H

#define TRY(call)                                                                                  \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != 0)                                                                              \
            return rc_;                                                                            \
    } while (0)

#endif
