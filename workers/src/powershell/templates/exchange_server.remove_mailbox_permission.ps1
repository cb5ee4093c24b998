$mailbox = Get-Mailbox -Identity ([string]$p.identity)
$trustee = Get-Recipient -Identity ([string]$p.user)
$has = @(Get-MailboxPermission -Identity ([string]$mailbox.DistinguishedName) -User ([string]$trustee.DistinguishedName) | Where-Object { -not $_.IsInherited -and -not $_.Deny -and ((@($_.AccessRights) -join ',') -match 'FullAccess') }).Count -gt 0
$StewardPrior = [ordered]@{ full_access = $has }
$result = [ordered]@{ mailbox = [string]$mailbox.DistinguishedName; user = [string]$trustee.DistinguishedName }
if (-not $has) {
    return (Out-StewardResult -Status 'unchanged' -Result $result -Prior $StewardPrior)
}
Remove-MailboxPermission -Identity ([string]$mailbox.DistinguishedName) -User ([string]$trustee.DistinguishedName) -AccessRights FullAccess -InheritanceType All -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result $result -Prior $StewardPrior)
