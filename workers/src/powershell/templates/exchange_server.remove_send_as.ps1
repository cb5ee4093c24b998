$mailboxDn = Get-StewardRecipientDn -Identity ([string]$p.identity)
$trustee = Get-Recipient -Identity ([string]$p.user)
$has = @(Get-ADPermission -Identity $mailboxDn -User ([string]$trustee.DistinguishedName) | Where-Object { -not $_.IsInherited -and -not $_.Deny -and ((@($_.ExtendedRights) -join ',') -match 'Send[- ]As') }).Count -gt 0
$StewardPrior = [ordered]@{ send_as = $has }
$result = [ordered]@{ mailbox = $mailboxDn; user = [string]$trustee.DistinguishedName }
if (-not $has) {
    return (Out-StewardResult -Status 'unchanged' -Result $result -Prior $StewardPrior)
}
Remove-ADPermission -Identity $mailboxDn -User ([string]$trustee.DistinguishedName) -ExtendedRights 'Send As' -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result $result -Prior $StewardPrior)
