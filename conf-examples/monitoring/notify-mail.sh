#!/bin/sh
# [notify] on_failure = "/etc/walkeeper/notify-mail.sh"
# Install: install -m 0755 conf-examples/monitoring/notify-mail.sh /etc/walkeeper/notify-mail.sh (edit the address)
# walkeeper passes the failure in the environment; keep this quick ([notify] timeout kills it).
exec mail -s "walkeeper ${WALKEEPER_EVENT} failed on ${WALKEEPER_HOST}" dba@example.com <<MAIL
${WALKEEPER_TIME}: walkeeper ${WALKEEPER_EVENT} failed (exit ${WALKEEPER_EXIT_CODE})
object:     ${WALKEEPER_OBJECT}
error:      ${WALKEEPER_ERROR}
repository: ${WALKEEPER_REPO}
failures not mailed since the previous mail (rate limit): ${WALKEEPER_SUPPRESSED}
MAIL
