$user = Get-StewardExUser -Identity ([string]$p.identity)
$kind = [string]$user.RecipientTypeDetails
$StewardPrior = [ordered]@{ recipient_type_details = $kind }
if ($kind -notmatch 'Mailbox$' -or $kind -match '^Remote') {
    return (Out-StewardResult -Status 'unchanged' -Prior $StewardPrior)
}
Disable-Mailbox -Identity ([string]$user.DistinguishedName) -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ distinguished_name = [string]$user.DistinguishedName }) -Prior $StewardPrior)
