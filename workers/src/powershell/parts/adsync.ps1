Import-Module ADSync
