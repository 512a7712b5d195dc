// libpq-fe.h lives in /usr/include/postgresql, which is not on the default search path.
#include <postgresql/libpq-fe.h>
